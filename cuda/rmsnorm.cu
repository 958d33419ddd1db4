#include "common.cuh"
// rmsnorm: out[t, :] = x[t, :] * rsqrt(mean(x[t, :]^2) + eps) * w
//
// grid  (T)            one block per row
// block (256)          a multiple of 32; thread i handles elements i, i + 256, ... (sum of squares, then scale)
// shared memory        32 floats (per-warp partial sums)
// dtypes               x, out float32 [T, D] (may alias); w float32 [D]; D any size; eps float32
// ptxas-budget: registers=32 threads=256

extern "C" __global__ void __launch_bounds__(256)
    rmsnorm_f32(const float* x, const float* __restrict__ w, float* out, int D, float eps) {
  __shared__ float scratch[32];
  const float* xr = x + size_t(blockIdx.x) * D;
  float* yr = out + size_t(blockIdx.x) * D;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < D; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss, scratch);
  const float scale = 1.0f / sqrtf(ss / float(D) + eps);
  for (int i = threadIdx.x; i < D; i += blockDim.x) yr[i] = xr[i] * scale * w[i];
}
