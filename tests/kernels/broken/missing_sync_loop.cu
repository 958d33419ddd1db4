#include "common.cuh"
// BROKEN ON PURPOSE (test fixture): a tiled row sum that lacks the barrier after consuming a tile, so a
// fast thread overwrites the tile while others still read it (a write-after-read race).
// grid (rows), block (64); n % 64 == 0. The correct kernel has __syncthreads() where marked.
// ptxas-budget: registers=32 threads=64

extern "C" __global__ void rowsum_f32(const float* __restrict__ x, float* __restrict__ y, int n) {
  __shared__ float tile[64];
  const float* row = x + size_t(blockIdx.x) * n;
  float acc = 0.0f;
  for (int k0 = 0; k0 < n; k0 += 64) {
    tile[threadIdx.x] = row[k0 + threadIdx.x];
    __syncthreads();
    // every thread sums the whole tile, rotated so that reads overlap other threads' next writes
    for (int j = 0; j < 64; ++j) acc += tile[(threadIdx.x + j) % 64];
    // missing: __syncthreads();
  }
  y[size_t(blockIdx.x) * 64 + threadIdx.x] = acc;
}
