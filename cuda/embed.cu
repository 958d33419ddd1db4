#include "common.cuh"
#include "quants.cuh"
// embed_<type>: out[t, :] = dequantize(table[ids[t], :])   (token embedding lookup on a GGUF table)
//
// grid  (T)            one block per token
// block (128)          thread i decodes groups of 8 elements i, i + 128, ... of the row
// shared memory        none
// dtypes               table: raw GGUF rows (uint8, V rows of row_bytes(D)); ids int32 [T]; out float32 [T, D]
// requires             D % 8 == 0 and D % QK == 0; an id outside [0, V) yields a NaN row (launchers reject
//                      such ids on the host first)
// ptxas-budget: registers=64 threads=128

template <class Q>
__device__ void embed(const uint8_t* __restrict__ table, const int* __restrict__ ids, float* __restrict__ out,
                      int V, int D) {
  const int t = blockIdx.x, id = ids[t];
  float* dst = out + size_t(t) * D;
  if (id < 0 || id >= V) {
    for (int e = threadIdx.x; e < D; e += blockDim.x) dst[e] = __int_as_float(0x7fc00000);
    return;
  }
  const uint8_t* row = table + size_t(id) * row_bytes<Q>(D);
  for (int g = threadIdx.x; g < D / 8; g += blockDim.x) {
    float v[8];
    Q::dq8(row, g, v);
    float4* o = reinterpret_cast<float4*>(dst + 8 * g);
    o[0] = make_float4(v[0], v[1], v[2], v[3]);
    o[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
}

#define EMBED_KERNEL(name, Q)                                                                             \
  extern "C" __global__ void __launch_bounds__(128)                                                       \
      embed_##name(const uint8_t* __restrict__ table, const int* __restrict__ ids, float* __restrict__ out, \
                   int V, int D) {                                                                        \
    embed<Q>(table, ids, out, V, D);                                                                      \
  }
GGUF_TYPES(EMBED_KERNEL)
