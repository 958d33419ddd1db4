#include "common.cuh"
// BROKEN ON PURPOSE (test fixture): odd and even threads wait at two different barriers.
// grid (1), block (64).
// ptxas-budget: registers=32 threads=64

extern "C" __global__ void divergent_f32(float* x) {
  __shared__ float s[64];
  s[threadIdx.x] = x[threadIdx.x];
  if (threadIdx.x % 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  x[threadIdx.x] = s[63 - threadIdx.x];
}
