#include "common.cuh"
// argmax_f32: out[b] = the first index of the largest value of logits[b, :] (greedy sampling; NaN ignored)
//
// grid  (B)            one block per row
// block (1024)         thread i scans i, i + 1024, ...; then warp shuffles and one shared round pick the
//                      (value, index) pair with the largest value, the smallest index on ties
// shared memory        static 32 floats + 32 ints
// dtypes               logits float32 [B, V]; out int32 [B]
// Sampling with temperature / top-k / top-p / min-p runs on the host (inference/sampler.py): the CUDA
// backend copies only the logits rows of non-greedy sequences back, so greedy decode moves 4 bytes a row.
// ptxas-budget: registers=32 threads=1024

__device__ __forceinline__ void take_better(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

extern "C" __global__ void __launch_bounds__(1024) argmax_f32(const float* __restrict__ logits, int* __restrict__ out, int V) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const float* row = logits + size_t(blockIdx.x) * V;
  float best = -INFINITY;
  int idx = 0x7fffffff;
  for (int j = threadIdx.x; j < V; j += blockDim.x) take_better(best, idx, row[j], j);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(FULL_MASK, best, o);
    const int oi = __shfl_xor_sync(FULL_MASK, idx, o);
    take_better(best, idx, ov, oi);
  }
  if (lane == 0) {
    sv[warp] = best;
    si[warp] = idx;
  }
  __syncthreads();
  if (warp == 0) {
    best = lane < nwarps ? sv[lane] : -INFINITY;
    idx = lane < nwarps ? si[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(FULL_MASK, best, o);
      const int oi = __shfl_xor_sync(FULL_MASK, idx, o);
      take_better(best, idx, ov, oi);
    }
    if (lane == 0) out[blockIdx.x] = idx == 0x7fffffff ? 0 : idx;
  }
}
