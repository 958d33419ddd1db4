#include "common.cuh"
// BROKEN ON PURPOSE (test fixture): lane 0 skips a full-mask shuffle the other 31 lanes wait in.
// grid (1), block (32).
// ptxas-budget: registers=32 threads=32

extern "C" __global__ void sum_f32(float* x) {
  float v = x[threadIdx.x];
  if (threadIdx.x != 0) v = warp_sum(v);
  x[threadIdx.x] = v;
}
