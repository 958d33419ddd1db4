#include "common.cuh"
// BROKEN ON PURPOSE (compile-check fixture): a dynamically indexed local array forces a stack frame, and
// __launch_bounds__(1024, 2) caps registers at 32 so ptxas spills. Its budget (16) is also exceeded.
// ptxas-budget: registers=16 threads=1024

extern "C" __global__ void __launch_bounds__(1024, 2) spill_f32(const float* x, float* y, const int* idx) {
  float a[64];
  for (int i = 0; i < 64; ++i) a[i] = x[threadIdx.x * 64 + i] * float(i);
  float s = 0.0f;
  for (int i = 0; i < 64; ++i) s += a[idx[i]] * a[(idx[i] + 7) % 64];
  y[threadIdx.x] = s;
}
