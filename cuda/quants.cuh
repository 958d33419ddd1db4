// GGUF tensor types as seen by kernels: block layouts (as ggml-common.h / gguf-py lay them out) and one
// decoder per type, `dq8(row, g, v)`, that writes elements 8g..8g+7 of a weight row to v[0..7].
//
// Eight consecutive elements always share one scale and come from eight consecutive bytes, so every
// type decodes the same way: a lane takes a group of 8, multiplies it with 8 activations (two float4).
// Arithmetic mirrors gguf.quants.dequantize in float32 (explicit _rn operations, no FMA contraction),
// so the decoded values are bit-identical to the reference.
//
// A row of K elements is K / QK blocks of `bytes` bytes; K must be a multiple of QK (and of 8).
// Blocks are only 2-byte aligned inside a row (e.g. Q4_0 is 18 bytes), so nothing here loads wider
// than the field it reads.
#pragma once
#include "common.cuh"

#define QK_K 256

struct block_q4_0 { __half d; uint8_t qs[16]; };
struct block_q4_1 { __half d, m; uint8_t qs[16]; };
struct block_q5_0 { __half d; uint8_t qh[4]; uint8_t qs[16]; };
struct block_q5_1 { __half d, m; uint8_t qh[4]; uint8_t qs[16]; };
struct block_q8_0 { __half d; int8_t qs[32]; };
struct block_q2_K { uint8_t scales[16]; uint8_t qs[64]; __half d, dmin; };
struct block_q3_K { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; __half d; };
struct block_q4_K { __half d, dmin; uint8_t scales[12]; uint8_t qs[128]; };
struct block_q5_K { __half d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; };
struct block_q6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; __half d; };

static_assert(sizeof(block_q4_0) == 18, "Q4_0 block is 18 bytes");
static_assert(sizeof(block_q4_1) == 20, "Q4_1 block is 20 bytes");
static_assert(sizeof(block_q5_0) == 22, "Q5_0 block is 22 bytes");
static_assert(sizeof(block_q5_1) == 24, "Q5_1 block is 24 bytes");
static_assert(sizeof(block_q8_0) == 34, "Q8_0 block is 34 bytes");
static_assert(sizeof(block_q2_K) == 84, "Q2_K block is 84 bytes");
static_assert(sizeof(block_q3_K) == 110, "Q3_K block is 110 bytes");
static_assert(sizeof(block_q4_K) == 144, "Q4_K block is 144 bytes");
static_assert(sizeof(block_q5_K) == 176, "Q5_K block is 176 bytes");
static_assert(sizeof(block_q6_K) == 210, "Q6_K block is 210 bytes");

__device__ __forceinline__ float h2f(__half h) { return __half2float(h); }

// ---- float types: a "block" is one element ----------------------------------------------------------
struct qt_f32 {
  static constexpr int qk = 1, bytes = 4;
  __device__ static void dq8(const uint8_t* row, int g, float* v) {
    const float4* p = reinterpret_cast<const float4*>(row) + 2 * g;  // rows of F32 are 16-byte aligned
    float4 a = p[0], b = p[1];
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  }
};
struct qt_f16 {
  static constexpr int qk = 1, bytes = 2;
  __device__ static void dq8(const uint8_t* row, int g, float* v) {
    const unsigned short* p = reinterpret_cast<const unsigned short*>(row) + 8 * g;
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = __half2float(__ushort_as_half(p[i]));
  }
};
struct qt_bf16 {
  static constexpr int qk = 1, bytes = 2;
  __device__ static void dq8(const uint8_t* row, int g, float* v) {
    const unsigned short* p = reinterpret_cast<const unsigned short*>(row) + 8 * g;
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = __uint_as_float(unsigned(p[i]) << 16);
  }
};

// ---- 32-element blocks -----------------------------------------------------------------------------
// elements 0..15 are the low nibbles of qs[0..15], 16..31 the high nibbles
struct qt_q4_0 {
  static constexpr int qk = 32, bytes = 18;
  __device__ static void dq8(const uint8_t* row, int g, float* v) {
    const block_q4_0* b = reinterpret_cast<const block_q4_0*>(row) + (g >> 2);
    const int sub = g & 3, shift = (sub >> 1) * 4;
    const uint8_t* q = b->qs + (sub & 1) * 8;
    const float d = h2f(b->d);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = mul_rn(d, float(int((q[i] >> shift) & 0xF) - 8));
  }
};
struct qt_q4_1 {
  static constexpr int qk = 32, bytes = 20;
  __device__ static void dq8(const uint8_t* row, int g, float* v) {
    const block_q4_1* b = reinterpret_cast<const block_q4_1*>(row) + (g >> 2);
    const int sub = g & 3, shift = (sub >> 1) * 4;
    const uint8_t* q = b->qs + (sub & 1) * 8;
    const float d = h2f(b->d), m = h2f(b->m);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = add_rn(mul_rn(d, float((q[i] >> shift) & 0xF)), m);
  }
};
// qh is a little-endian uint32 whose bit e is bit 4 of element e
__device__ __forceinline__ unsigned load_qh32(const uint8_t* qh) {
  return unsigned(qh[0]) | unsigned(qh[1]) << 8 | unsigned(qh[2]) << 16 | unsigned(qh[3]) << 24;
}
struct qt_q5_0 {
  static constexpr int qk = 32, bytes = 22;
  __device__ static void dq8(const uint8_t* row, int g, float* v) {
    const block_q5_0* b = reinterpret_cast<const block_q5_0*>(row) + (g >> 2);
    const int sub = g & 3, shift = (sub >> 1) * 4, e0 = sub * 8;
    const uint8_t* q = b->qs + (sub & 1) * 8;
    const unsigned qh = load_qh32(b->qh);
    const float d = h2f(b->d);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      int x = int(((q[i] >> shift) & 0xF) | (((qh >> (e0 + i)) & 1u) << 4)) - 16;
      v[i] = mul_rn(d, float(x));
    }
  }
};
struct qt_q5_1 {
  static constexpr int qk = 32, bytes = 24;
  __device__ static void dq8(const uint8_t* row, int g, float* v) {
    const block_q5_1* b = reinterpret_cast<const block_q5_1*>(row) + (g >> 2);
    const int sub = g & 3, shift = (sub >> 1) * 4, e0 = sub * 8;
    const uint8_t* q = b->qs + (sub & 1) * 8;
    const unsigned qh = load_qh32(b->qh);
    const float d = h2f(b->d), m = h2f(b->m);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      unsigned x = ((q[i] >> shift) & 0xF) | (((qh >> (e0 + i)) & 1u) << 4);
      v[i] = add_rn(mul_rn(d, float(x)), m);
    }
  }
};
struct qt_q8_0 {
  static constexpr int qk = 32, bytes = 34;
  __device__ static void dq8(const uint8_t* row, int g, float* v) {
    const block_q8_0* b = reinterpret_cast<const block_q8_0*>(row) + (g >> 2);
    const int8_t* q = b->qs + (g & 3) * 8;
    const float d = h2f(b->d);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = mul_rn(d, float(q[i]));
  }
};

// ---- 256-element super-blocks (k-quants); g & 31 is the group inside the super-block -------------------
// Q2_K: 16 sub-blocks of 16 with a 4-bit scale and a 4-bit min; 2-bit quants, 32 bytes per 128 elements
struct qt_q2_K {
  static constexpr int qk = QK_K, bytes = 84;
  __device__ static void dq8(const uint8_t* row, int g, float* v) {
    const block_q2_K* b = reinterpret_cast<const block_q2_K*>(row) + (g >> 5);
    const int e0 = (g & 31) * 8, grp = e0 / 32, l0 = e0 % 32;
    const uint8_t sc = b->scales[e0 / 16];
    const float dl = mul_rn(h2f(b->d), float(sc & 0xF)), ml = mul_rn(h2f(b->dmin), float(sc >> 4));
    const uint8_t* q = b->qs + (grp / 4) * 32 + l0;
    const int shift = 2 * (grp % 4);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = sub_rn(mul_rn(dl, float((q[i] >> shift) & 3)), ml);
  }
};
// Q3_K: 16 sub-blocks of 16 with signed 6-bit scales; 2 low bits in qs, the third bit in hmask (set = +0)
struct qt_q3_K {
  static constexpr int qk = QK_K, bytes = 110;
  __device__ static void dq8(const uint8_t* row, int g, float* v) {
    const block_q3_K* b = reinterpret_cast<const block_q3_K*>(row) + (g >> 5);
    const int e0 = (g & 31) * 8, grp = e0 / 32, l0 = e0 % 32, is = e0 / 16;
    const int lo = (b->scales[is % 8] >> (4 * (is / 8))) & 0xF;
    const int hi = (b->scales[8 + is % 4] >> (2 * (is / 4))) & 3;
    const float dl = mul_rn(h2f(b->d), float((lo | (hi << 4)) - 32));
    const uint8_t* q = b->qs + (grp / 4) * 32 + l0;
    const uint8_t* hm = b->hmask + l0;
    const int shift = 2 * (grp % 4);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      int x = int((q[i] >> shift) & 3) - (((hm[i] >> grp) & 1) ? 0 : 4);
      v[i] = mul_rn(dl, float(x));
    }
  }
};
// Q4_K / Q5_K: 8 sub-blocks of 32 with 6-bit scale and min packed in 12 bytes
__device__ __forceinline__ void scale_min_k4(const uint8_t* s, int j, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}
struct qt_q4_K {
  static constexpr int qk = QK_K, bytes = 144;
  __device__ static void dq8(const uint8_t* row, int g, float* v) {
    const block_q4_K* b = reinterpret_cast<const block_q4_K*>(row) + (g >> 5);
    const int e0 = (g & 31) * 8, j = e0 / 32;
    int sc, mn;
    scale_min_k4(b->scales, j, &sc, &mn);
    const float dl = mul_rn(h2f(b->d), float(sc)), ml = mul_rn(h2f(b->dmin), float(mn));
    const uint8_t* q = b->qs + (j / 2) * 32 + e0 % 32;
    const int shift = 4 * (j % 2);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = sub_rn(mul_rn(dl, float((q[i] >> shift) & 0xF)), ml);
  }
};
struct qt_q5_K {
  static constexpr int qk = QK_K, bytes = 176;
  __device__ static void dq8(const uint8_t* row, int g, float* v) {
    const block_q5_K* b = reinterpret_cast<const block_q5_K*>(row) + (g >> 5);
    const int e0 = (g & 31) * 8, j = e0 / 32;
    int sc, mn;
    scale_min_k4(b->scales, j, &sc, &mn);
    const float dl = mul_rn(h2f(b->d), float(sc)), ml = mul_rn(h2f(b->dmin), float(mn));
    const uint8_t* q = b->qs + (j / 2) * 32 + e0 % 32;
    const uint8_t* qh = b->qh + e0 % 32;
    const int shift = 4 * (j % 2);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      unsigned x = ((q[i] >> shift) & 0xF) | (((qh[i] >> j) & 1u) << 4);
      v[i] = sub_rn(mul_rn(dl, float(x)), ml);
    }
  }
};
// Q6_K: 16 sub-blocks of 16 with int8 scales; 4 low bits in ql, 2 high bits in qh, offset 32
struct qt_q6_K {
  static constexpr int qk = QK_K, bytes = 210;
  __device__ static void dq8(const uint8_t* row, int g, float* v) {
    const block_q6_K* b = reinterpret_cast<const block_q6_K*>(row) + (g >> 5);
    const int e0 = (g & 31) * 8, grp = e0 / 32, l0 = e0 % 32, half = grp / 4;
    const float dl = mul_rn(h2f(b->d), float(b->scales[e0 / 16]));
    const uint8_t* ql = b->ql + half * 64 + (grp % 2) * 32 + l0;
    const uint8_t* qh = b->qh + half * 32 + l0;
    const int lshift = 4 * ((grp % 4) / 2), hshift = 2 * (grp % 4);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      int x = int(((ql[i] >> lshift) & 0xF) | (((qh[i] >> hshift) & 3) << 4)) - 32;
      v[i] = mul_rn(dl, float(x));
    }
  }
};

// Bytes of one row of `k` elements.
template <class Q>
__device__ __forceinline__ size_t row_bytes(int k) {
  return size_t(k / Q::qk) * Q::bytes;
}

// X-macro over every supported type: X(suffix, trait)
#define GGUF_TYPES(X) \
  X(f32, qt_f32)      \
  X(f16, qt_f16)      \
  X(bf16, qt_bf16)    \
  X(q4_0, qt_q4_0)    \
  X(q4_1, qt_q4_1)    \
  X(q5_0, qt_q5_0)    \
  X(q5_1, qt_q5_1)    \
  X(q8_0, qt_q8_0)    \
  X(q2_K, qt_q2_K)    \
  X(q3_K, qt_q3_K)    \
  X(q4_K, qt_q4_K)    \
  X(q5_K, qt_q5_K)    \
  X(q6_K, qt_q6_K)
