#include "common.cuh"
// BROKEN ON PURPOSE (test fixture): writes one element past the end (i <= n instead of i < n).
// grid (1), block (64).
// ptxas-budget: registers=32 threads=64

extern "C" __global__ void fill_f32(float* y, int n) {
  for (int i = threadIdx.x; i <= n; i += blockDim.x) y[i] = 1.0f;
}
