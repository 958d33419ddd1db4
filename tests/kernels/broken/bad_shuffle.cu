#include "common.cuh"
// BROKEN ON PURPOSE (test fixture): the lower half-warp shuffles from lane 31, outside its mask.
// grid (1), block (32).
// ptxas-budget: registers=32 threads=32

extern "C" __global__ void shuffle_f32(float* x) {
  float v = x[threadIdx.x];
  if (threadIdx.x < 16) v = __shfl_sync(0x0000ffffu, v, 31);
  x[threadIdx.x] = v;
}
