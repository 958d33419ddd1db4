#include "common.cuh"
#include "quants.cuh"
// matmul_<type>: y[t, n] = sum_k x[t, k] * W[n, k] (+ bias[n]) for many tokens (prefill), tiled.
//
// grid  (ceil(N / 64), ceil(T / 64))   block (256) = 16 x 16 threads
// Each step stages a 64-row x 32-k slice of W (dequantized: thread i decodes one group of 8 of row i / 4)
// and a 64-token x 32-k slice of x in shared memory, k-major; thread (tx, ty) accumulates the 4 x 4
// outputs tokens ty + 16 i, rows tx + 16 j, so the weight reads of a warp hit 16 consecutive banks.
// shared memory        static 2 x 32 x 68 floats = 17,408 bytes
// dtypes               W raw GGUF rows [N, row_bytes(K)]; x float32 [T, K]; bias float32 [N] or null;
//                      y float32 [T, N]
// requires             K % 32 == 0 and K % QK == 0 (true of every GGUF quant type; asserted for F32/F16/BF16)
// ptxas-budget: registers=64 threads=256

#define MM_BM 64  // tokens per block
#define MM_BN 64  // weight rows per block
#define MM_BK 32  // k per step
#define MM_PAD 4

template <class Q>
__device__ void matmul(const uint8_t* __restrict__ W, const float* __restrict__ x, const float* __restrict__ bias,
                       float* __restrict__ y, int N, int K, int T) {
  __shared__ __align__(16) float ws[MM_BK][MM_BN + MM_PAD];  // ws[k][n]
  __shared__ __align__(16) float xs[MM_BK][MM_BM + MM_PAD];  // xs[k][t]
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int n0 = blockIdx.x * MM_BN, t0 = blockIdx.y * MM_BM;
  const int lr = tid / 4, lg = tid % 4;  // loader: row/token lr, group of 8 lg within the 32-k slice
  const size_t rb = row_bytes<Q>(K);
  float acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += MM_BK) {
    float v[8];
    if (n0 + lr < N) {
      Q::dq8(W + size_t(n0 + lr) * rb, k0 / 8 + lg, v);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) ws[lg * 8 + i][lr] = v[i];
    if (t0 + lr < T) {
      const float4* xp = reinterpret_cast<const float4*>(x + size_t(t0 + lr) * K + k0 + lg * 8);
      const float4 a = xp[0], b = xp[1];
      v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) xs[lg * 8 + i][lr] = v[i];
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < MM_BK; ++k) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = xs[k][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = ws[k][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();  // the next step overwrites the tiles
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int t = t0 + ty + 16 * i;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int n = n0 + tx + 16 * j;
      if (t < T && n < N) y[size_t(t) * N + n] = acc[i][j] + (bias ? bias[n] : 0.0f);
    }
  }
}

#define MATMUL_KERNEL(name, Q)                                                                              \
  extern "C" __global__ void __launch_bounds__(256)                                                         \
      matmul_##name(const uint8_t* __restrict__ W, const float* __restrict__ x, const float* __restrict__ bias, \
                    float* __restrict__ y, int N, int K, int T) {                                           \
    matmul<Q>(W, x, bias, y, N, K, T);                                                                      \
  }
GGUF_TYPES(MATMUL_KERNEL)
