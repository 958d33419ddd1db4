#include "common.cuh"
#include "quants.cuh"
// BROKEN ON PURPOSE (test fixture): the Q8_0 embed kernel with one bit of the fp16 scale flipped
// (bit 10, the lowest exponent bit: every other scale doubles or halves). Same launch as embed_q8_0.
// ptxas-budget: registers=64 threads=128

struct qt_q8_0_flipped {
  static constexpr int qk = 32, bytes = 34;
  __device__ static void dq8(const uint8_t* row, int g, float* v) {
    const block_q8_0* b = reinterpret_cast<const block_q8_0*>(row) + (g >> 2);
    const int8_t* q = b->qs + (g & 3) * 8;
    const float d = h2f(__ushort_as_half(__half_as_ushort(b->d) ^ 0x0400));
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = mul_rn(d, float(q[i]));
  }
};

extern "C" __global__ void embed_q8_0(const uint8_t* __restrict__ table, const int* __restrict__ ids,
                                      float* __restrict__ out, int V, int D) {
  const uint8_t* row = table + size_t(ids[blockIdx.x]) * row_bytes<qt_q8_0_flipped>(D);
  for (int g = threadIdx.x; g < D / 8; g += blockDim.x) {
    float v[8];
    qt_q8_0_flipped::dq8(row, g, v);
    for (int i = 0; i < 8; ++i) out[size_t(blockIdx.x) * D + 8 * g + i] = v[i];
  }
}
