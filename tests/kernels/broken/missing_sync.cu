#include "common.cuh"
// BROKEN ON PURPOSE (test fixture): reverses a block's slice through shared memory without the
// __syncthreads() between the writes and the reads. grid (n / 256), block (256).
// ptxas-budget: registers=32 threads=256

extern "C" __global__ void reverse_f32(const float* __restrict__ x, float* __restrict__ y) {
  __shared__ float s[256];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  s[threadIdx.x] = x[i];
  // missing: __syncthreads();
  y[i] = s[blockDim.x - 1 - threadIdx.x];
}
