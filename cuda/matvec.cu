#include "common.cuh"
#include "quants.cuh"
// matvec_<type>_t1 / matvec_<type>_t8: y[t, n] = sum_k x[t, k] * W[n, k] (+ bias[n]) for T <= 8 tokens
// (decode and small batches): W stays quantized and every weight byte is read once per launch, however
// many of the T tokens there are.
//
// grid  (ceil(N / 4))    block (32, 4)   warp y of block b owns output row n = 4b + y
// lane l decodes groups of 8 weights l, l + 32, ... of its row (Q::dq8), multiplies each with the same
// 8 activations of every token (two float4 loads per token), then the warp sums its 32 partial sums.
// shared memory        none
// dtypes               W raw GGUF rows [N, row_bytes(K)]; x float32 [T, K] (16-byte aligned);
//                      bias float32 [N] or null; y float32 [T, N]
// requires             K % 8 == 0 and K % QK == 0; 1 <= T <= 1 (_t1) or 8 (_t8)
// ptxas-budget: registers=64 threads=128

template <class Q, int NT>
__device__ void matvec(const uint8_t* __restrict__ W, const float* __restrict__ x, const float* __restrict__ bias,
                       float* __restrict__ y, int N, int K, int T) {
  const int n = blockIdx.x * blockDim.y + threadIdx.y, lane = threadIdx.x;
  if (n >= N) return;  // the whole warp leaves together: no barrier follows, shuffles stay full-warp
  const uint8_t* row = W + size_t(n) * row_bytes<Q>(K);
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
  for (int g = lane; g < K / 8; g += 32) {
    float w[8];
    Q::dq8(row, g, w);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (t < T) {
        const float4* xp = reinterpret_cast<const float4*>(x + size_t(t) * K + 8 * g);
        const float4 a = xp[0], b = xp[1];
        acc[t] += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x + w[5] * b.y + w[6] * b.z +
                  w[7] * b.w;
      }
    }
  }
  const float b = bias ? bias[n] : 0.0f;
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const float s = warp_sum(acc[t]);
    if (lane == 0 && t < T) y[size_t(t) * N + n] = s + b;
  }
}

#define MATVEC_KERNELS(name, Q)                                                                            \
  extern "C" __global__ void __launch_bounds__(128)                                                        \
      matvec_##name##_t1(const uint8_t* __restrict__ W, const float* __restrict__ x,                       \
                         const float* __restrict__ bias, float* __restrict__ y, int N, int K, int T) {     \
    matvec<Q, 1>(W, x, bias, y, N, K, T);                                                                  \
  }                                                                                                        \
  extern "C" __global__ void __launch_bounds__(128)                                                        \
      matvec_##name##_t8(const uint8_t* __restrict__ W, const float* __restrict__ x,                       \
                         const float* __restrict__ bias, float* __restrict__ y, int N, int K, int T) {     \
    matvec<Q, 8>(W, x, bias, y, N, K, T);                                                                  \
  }
GGUF_TYPES(MATVEC_KERNELS)
