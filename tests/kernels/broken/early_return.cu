#include "common.cuh"
// BROKEN ON PURPOSE (test fixture): threads past n return before a barrier the others wait at.
// grid (1), block (256).
// ptxas-budget: registers=32 threads=256

extern "C" __global__ void scale_f32(float* x, int n) {
  __shared__ float total[1];
  if (threadIdx.x >= n) return;  // wrong: the barrier below needs the whole block
  if (threadIdx.x == 0) total[0] = 2.0f;
  __syncthreads();
  x[threadIdx.x] *= total[0];
}
