/* Block decoders shared by dequant.c and matvec.c: every GGUF block type, three ways.
 *
 * 1. deq_<type>(block, y): the readable definition, block -> float32 [32 or 256], element by element in
 *    the order and with the arithmetic of gguf-py's `dequantize_blocks` (gguf/quants.py), so the scalar
 *    path is the reference, bit for bit on x86-64 (no FMA contraction in the baseline ISA).
 * 2. codes_<type>(block, q, sm) (AVX2, byte ops on 32 bytes at a time): int8 codes q [32 or 256] with the
 *    offsets (Q4_0's -8 ...) applied, and sm = (s, m) per group of 16 so that w = s * q + m. The AVX2
 *    paths convert and scale them 8 at a time; the AVX-512 path uses the Q2_K, Q3_K and Q6_K ones.
 * 3. prep_512 / dec_512 (AVX-512 F/BW/VL/DQ): a block's scales once, then its weights 32 at a time as
 *    float32 in two zmm registers; see section 3.
 * Sections 2 and 3 are inlined into the TARGET_* functions of the two files; their half -> float
 * conversions are F16C instructions there.
 *
 * Layouts (x = element value), all as in ggml:
 *   Q4_0 18 B  d, qs[16]        x[l] = d * (nib - 8), nib = qs[l] & 15 (l < 16), qs[l - 16] >> 4 (l >= 16)
 *   Q4_1 20 B  d, m, qs[16]     x = d * nib + m
 *   Q5_0 22 B  d, qh[4], qs[16] q = nib | bit l of qh (little-endian u32) << 4;  x = d * (q - 16)
 *   Q5_1 24 B  d, m, qh, qs     x = d * q + m
 *   Q8_0 34 B  d, qs[32] int8   x = d * qs
 *   K-quants: 256-element super-blocks; element e = h * 128 + j * 32 + l (h half, j quarter, l < 32)
 *   Q2_K 84 B  scales[16] (lo nibble scale, hi nibble min, per 16), qs[64], d, dmin
 *              x = d * (sc & 15) * ((qs[32h + l] >> 2j) & 3) - dmin * (sc >> 4)
 *   Q3_K 110 B hmask[32], qs[64], scales[12] (16 six-bit signed scales - 32), d
 *              x = d * (sc - 32) * (((qs[32h + l] >> 2j) & 3) - (bit h*4+j of hmask[l] ? 0 : 4))
 *   Q4_K 144 B d, dmin, scales[12] (8 six-bit scales + 8 six-bit mins, per 32), qs[128]
 *              sub-block c = e / 32: x = d * sc[c] * ((qs[32 (c / 2) + l] >> 4 (c & 1)) & 15) - dmin * mn[c]
 *   Q5_K 176 B d, dmin, scales[12], qh[32], qs[128]: Q4_K's nibble | bit c of qh[l] << 4
 *   Q6_K 210 B ql[128], qh[64], scales[16] int8 (per 16), d; e = 128 a + r:
 *              q = ((ql[64a + r % 64] >> 4 (r / 64)) & 15) | ((qh[32a + l] >> 2 (r / 32)) & 3) << 4
 *              x = d * sc[e / 16] * (q - 32)
 */
#ifndef GGUF_SERVE_CPU_BLOCKS_H
#define GGUF_SERVE_CPU_BLOCKS_H

#include "common.h"
#include "kernels.h"

#define INLINE static inline __attribute__((always_inline))


/* ---- 1. the definition: block -> float32 ----------------------------------------------------------- */

static inline int nibble(const uint8_t *qs, int l) { return l < 16 ? qs[l] & 15 : qs[l - 16] >> 4; }

static inline uint32_t load_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static inline void deq_q4_0(const block_q4_0 *b, float *y) {
    const float d = fp16_to_fp32(b->d);
    for (int l = 0; l < QK; l++) y[l] = d * (float)(nibble(b->qs, l) - 8);
}

static inline void deq_q4_1(const block_q4_1 *b, float *y) {
    const float d = fp16_to_fp32(b->d), m = fp16_to_fp32(b->m);
    for (int l = 0; l < QK; l++) y[l] = d * (float)nibble(b->qs, l) + m;
}

static inline void deq_q5_0(const block_q5_0 *b, float *y) {
    const float d = fp16_to_fp32(b->d);
    const uint32_t qh = load_u32(b->qh);
    for (int l = 0; l < QK; l++) y[l] = d * (float)((nibble(b->qs, l) | (int)((qh >> l) & 1) << 4) - 16);
}

static inline void deq_q5_1(const block_q5_1 *b, float *y) {
    const float d = fp16_to_fp32(b->d), m = fp16_to_fp32(b->m);
    const uint32_t qh = load_u32(b->qh);
    for (int l = 0; l < QK; l++) y[l] = d * (float)(nibble(b->qs, l) | (int)((qh >> l) & 1) << 4) + m;
}

static inline void deq_q8_0(const block_q8_0 *b, float *y) {
    const float d = fp16_to_fp32(b->d);
    for (int l = 0; l < QK; l++) y[l] = (float)b->qs[l] * d;
}

static inline void deq_q2_K(const block_q2_K *b, float *y) {
    const float d = fp16_to_fp32(b->d), dmin = fp16_to_fp32(b->dmin);
    for (int e = 0; e < QK_K; e++) {
        const int h = e / 128, j = e % 128 / 32, l = e % 32, sc = b->scales[e / 16];
        const float dl = d * (float)(sc & 15), ml = dmin * (float)(sc >> 4);
        y[e] = dl * (float)((b->qs[32 * h + l] >> (2 * j)) & 3) - ml;
    }
}

/* Q3_K's 16 six-bit scales: low 4 bits in scales[0..7] (two per byte), high 2 bits in scales[8..11] */
static inline int q3_K_scale(const uint8_t *scales, int i) {
    const int lo = (scales[i % 8] >> (4 * (i / 8))) & 15, hi = (scales[8 + i % 4] >> (2 * (i / 4))) & 3;
    return (lo | hi << 4) - 32;
}

static inline void deq_q3_K(const block_q3_K *b, float *y) {
    const float d = fp16_to_fp32(b->d);
    for (int e = 0; e < QK_K; e++) {
        const int h = e / 128, j = e % 128 / 32, l = e % 32;
        const int q = ((b->qs[32 * h + l] >> (2 * j)) & 3) - ((b->hmask[l] >> (e / 32)) & 1 ? 0 : 4);
        y[e] = d * (float)q3_K_scale(b->scales, e / 16) * (float)q;
    }
}

/* Q4_K / Q5_K: scale and min of sub-block c (< 8), six bits each, packed in 12 bytes (ggml's
 * get_scale_min_k4) */
static inline void k4_scale_min(const uint8_t *s, int c, int *sc, int *mn) {
    if (c < 4) {
        *sc = s[c] & 63;
        *mn = s[c + 4] & 63;
    } else {
        *sc = (s[c + 4] & 15) | (s[c - 4] >> 6) << 4;
        *mn = (s[c + 4] >> 4) | (s[c] >> 6) << 4;
    }
}

/* the same 16 six-bit values at once: out[c] = sc[c], out[8 + c] = mn[c] for c < 8 (ggml's utmp shuffle) */
static inline void k4_unpack(const uint8_t *scales, uint8_t *out) {
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    uint32_t u[4];
    memcpy(u, scales, 12);
    u[3] = ((u[2] >> 4) & m4) | ((u[1] >> 6) & m2) << 4; /* mn[4..7] */
    const uint32_t mn_lo = u[1] & m6;                    /* mn[0..3] */
    u[1] = (u[2] & m4) | ((u[0] >> 6) & m2) << 4;        /* sc[4..7] */
    u[2] = mn_lo;
    u[0] &= m6; /* sc[0..3] */
    memcpy(out, u, 16);
}

static inline void deq_q4_K(const block_q4_K *b, float *y) {
    const float d = fp16_to_fp32(b->d), dmin = fp16_to_fp32(b->dmin);
    for (int e = 0; e < QK_K; e++) {
        const int c = e / 32, l = e % 32;
        int sc, mn;
        k4_scale_min(b->scales, c, &sc, &mn);
        const int q = (b->qs[32 * (c / 2) + l] >> (4 * (c & 1))) & 15;
        y[e] = d * (float)sc * (float)q - dmin * (float)mn;
    }
}

static inline void deq_q5_K(const block_q5_K *b, float *y) {
    const float d = fp16_to_fp32(b->d), dmin = fp16_to_fp32(b->dmin);
    for (int e = 0; e < QK_K; e++) {
        const int c = e / 32, l = e % 32;
        int sc, mn;
        k4_scale_min(b->scales, c, &sc, &mn);
        const int q = ((b->qs[32 * (c / 2) + l] >> (4 * (c & 1))) & 15) | ((b->qh[l] >> c) & 1) << 4;
        y[e] = d * (float)sc * (float)q - dmin * (float)mn;
    }
}

static inline void deq_q6_K(const block_q6_K *b, float *y) {
    const float d = fp16_to_fp32(b->d);
    for (int e = 0; e < QK_K; e++) {
        const int a = e / 128, r = e % 128, l = e % 32;
        const int lo = (b->ql[64 * a + r % 64] >> (4 * (r / 64))) & 15;
        const int hi = (b->qh[32 * a + l] >> (2 * (r / 32))) & 3;
        y[e] = d * (float)b->scales[e / 16] * (float)((lo | hi << 4) - 32);
    }
}

/* one block of a quantized type -> float32 [ggml_block_elems(type)] */
static inline void deq_block(int type, const uint8_t *p, float *y) {
    switch (type) {
    case GGML_Q4_0: deq_q4_0((const block_q4_0 *)p, y); break;
    case GGML_Q4_1: deq_q4_1((const block_q4_1 *)p, y); break;
    case GGML_Q5_0: deq_q5_0((const block_q5_0 *)p, y); break;
    case GGML_Q5_1: deq_q5_1((const block_q5_1 *)p, y); break;
    case GGML_Q8_0: deq_q8_0((const block_q8_0 *)p, y); break;
    case GGML_Q2_K: deq_q2_K((const block_q2_K *)p, y); break;
    case GGML_Q3_K: deq_q3_K((const block_q3_K *)p, y); break;
    case GGML_Q4_K: deq_q4_K((const block_q4_K *)p, y); break;
    case GGML_Q5_K: deq_q5_K((const block_q5_K *)p, y); break;
    case GGML_Q6_K: deq_q6_K((const block_q6_K *)p, y); break;
    }
}

/* a row of k elements of any supported type -> float32 [k] (scalar) */
static inline void deq_row_scalar(int type, const uint8_t *row, int64_t k, float *y) {
    switch (type) {
    case GGML_F32: memcpy(y, row, 4 * k); return;
    case GGML_F16:
        for (int64_t i = 0; i < k; i++) y[i] = fp16_to_fp32(((const ggml_half *)row)[i]);
        return;
    case GGML_BF16:
        for (int64_t i = 0; i < k; i++) y[i] = bf16_to_fp32(((const uint16_t *)row)[i]);
        return;
    }
    const int be = ggml_block_elems(type), bb = ggml_block_bytes(type);
    for (int64_t b = 0; b < k / be; b++) deq_block(type, row + b * bb, y + b * be);
}

/* ---- 2. codes for the SIMD paths: w[16 g + i] = sm[2 g] * q[16 g + i] + sm[2 g + 1] ---------------- */
#if CPU_X86

/* half -> float: one vcvtph2ps (F16C) */
TARGET_AVX2 INLINE float half_hw(ggml_half h) { return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h))); }

INLINE void sm_fill(float *sm, int groups, float s, float m) {
    for (int g = 0; g < groups; g++) sm[2 * g] = s, sm[2 * g + 1] = m;
}

TARGET_AVX2 INLINE __m256i load256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
TARGET_AVX2 INLINE void store256(int8_t *q, __m256i v) { _mm256_storeu_si256((__m256i *)q, v); }
TARGET_AVX2 INLINE __m256i bytes(int v) { return _mm256_set1_epi8((char)v); }

/* 16 bytes of nibbles -> 32 bytes: low nibbles (elements 0..15), then high nibbles (16..31) */
TARGET_AVX2 INLINE __m256i nibbles32(const uint8_t *qs) {
    const __m128i v = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), bytes(15));
}

/* Q5's fifth bits: bit l of the little-endian u32 qh -> 16 in byte l (ggml's bytes_from_bits_32) */
TARGET_AVX2 INLINE __m256i q5_high32(const uint8_t *qh) {
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)load_u32(qh)),
                                               _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                                                 0x0101010101010101, 0x0000000000000000));
    const __m256i set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)),
                                          _mm256_set1_epi64x(-1));
    return _mm256_and_si256(set, bytes(16));
}

/* 16 where bit `bit` of the byte is set, else 0 */
TARGET_AVX2 INLINE __m256i bit_to_16(__m256i v, int bit) {
    const __m256i m = bytes(1 << bit);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, m), m), bytes(16));
}

TARGET_AVX2 INLINE void codes_q4_0(const uint8_t *p, int8_t *q, float *sm) {
    const block_q4_0 *b = (const block_q4_0 *)p;
    store256(q, _mm256_sub_epi8(nibbles32(b->qs), bytes(8)));
    sm_fill(sm, 2, half_hw(b->d), 0.0f);
}

TARGET_AVX2 INLINE void codes_q4_1(const uint8_t *p, int8_t *q, float *sm) {
    const block_q4_1 *b = (const block_q4_1 *)p;
    store256(q, nibbles32(b->qs));
    sm_fill(sm, 2, half_hw(b->d), half_hw(b->m));
}

TARGET_AVX2 INLINE void codes_q5_0(const uint8_t *p, int8_t *q, float *sm) {
    const block_q5_0 *b = (const block_q5_0 *)p;
    store256(q, _mm256_sub_epi8(_mm256_or_si256(nibbles32(b->qs), q5_high32(b->qh)), bytes(16)));
    sm_fill(sm, 2, half_hw(b->d), 0.0f);
}

TARGET_AVX2 INLINE void codes_q5_1(const uint8_t *p, int8_t *q, float *sm) {
    const block_q5_1 *b = (const block_q5_1 *)p;
    store256(q, _mm256_or_si256(nibbles32(b->qs), q5_high32(b->qh)));
    sm_fill(sm, 2, half_hw(b->d), half_hw(b->m));
}

TARGET_AVX2 INLINE void codes_q8_0(const uint8_t *p, int8_t *q, float *sm) {
    const block_q8_0 *b = (const block_q8_0 *)p;
    store256(q, load256(b->qs));
    sm_fill(sm, 2, half_hw(b->d), 0.0f);
}

/* K-quants: 32 bytes hold the 2-bit (Q2_K, Q3_K) or 4-bit (Q4_K ...) fields of 128 or 64 elements */
TARGET_AVX2 INLINE void codes_q2_K(const uint8_t *p, int8_t *q, float *sm) {
    const block_q2_K *b = (const block_q2_K *)p;
    for (int h = 0; h < 2; h++) {
        const __m256i v = load256(b->qs + 32 * h);
        for (int j = 0; j < 4; j++) store256(q + 128 * h + 32 * j, _mm256_and_si256(_mm256_srli_epi16(v, 2 * j), bytes(3)));
    }
    const float d = half_hw(b->d), dmin = half_hw(b->dmin);
    for (int g = 0; g < 16; g++) {
        sm[2 * g] = d * (float)(b->scales[g] & 15);
        sm[2 * g + 1] = -(dmin * (float)(b->scales[g] >> 4));
    }
}

TARGET_AVX2 INLINE void codes_q3_K(const uint8_t *p, int8_t *q, float *sm) {
    const block_q3_K *b = (const block_q3_K *)p;
    const __m256i hm = load256(b->hmask);
    for (int h = 0; h < 2; h++) {
        const __m256i v = load256(b->qs + 32 * h);
        for (int j = 0; j < 4; j++) {
            const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(v, 2 * j), bytes(3));
            const __m256i four = _mm256_srli_epi16(bit_to_16(hm, 4 * h + j), 2); /* 4 where the bit is set */
            store256(q + 128 * h + 32 * j, _mm256_add_epi8(_mm256_sub_epi8(lo, bytes(4)), four));
        }
    }
    const float d = half_hw(b->d);
    for (int g = 0; g < 16; g++) sm[2 * g] = d * (float)q3_K_scale(b->scales, g), sm[2 * g + 1] = 0.0f;
}

/* Q4_K / Q5_K sub-block scales: (d * sc, -dmin * mn) for both 16-groups of each of the 8 sub-blocks */
INLINE void k4_sm(const uint8_t *scales, float d, float dmin, float *sm) {
    uint8_t v[16];
    k4_unpack(scales, v);
    for (int c = 0; c < 8; c++) sm_fill(sm + 4 * c, 2, d * (float)v[c], -(dmin * (float)v[8 + c]));
}

TARGET_AVX2 INLINE void codes_q4_K(const uint8_t *p, int8_t *q, float *sm) {
    const block_q4_K *b = (const block_q4_K *)p;
    for (int c = 0; c < 4; c++) {
        const __m256i v = load256(b->qs + 32 * c);
        store256(q + 64 * c, _mm256_and_si256(v, bytes(15)));
        store256(q + 64 * c + 32, _mm256_and_si256(_mm256_srli_epi16(v, 4), bytes(15)));
    }
    k4_sm(b->scales, half_hw(b->d), half_hw(b->dmin), sm);
}

TARGET_AVX2 INLINE void codes_q5_K(const uint8_t *p, int8_t *q, float *sm) {
    const block_q5_K *b = (const block_q5_K *)p;
    const __m256i qh = load256(b->qh);
    for (int c = 0; c < 4; c++) {
        const __m256i v = load256(b->qs + 32 * c);
        store256(q + 64 * c, _mm256_or_si256(_mm256_and_si256(v, bytes(15)), bit_to_16(qh, 2 * c)));
        store256(q + 64 * c + 32,
                 _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), bytes(15)), bit_to_16(qh, 2 * c + 1)));
    }
    k4_sm(b->scales, half_hw(b->d), half_hw(b->dmin), sm);
}

/* Q6_K's 256 six-bit codes - 32 (the scales are left to the caller) */
TARGET_AVX2 INLINE void q6_K_codes(const block_q6_K *b, int8_t *q) {
    const __m256i m4 = bytes(15), m2 = bytes(0x30), off = bytes(32);
    for (int a = 0; a < 2; a++) {
        const __m256i l0 = load256(b->ql + 64 * a), l1 = load256(b->ql + 64 * a + 32), h = load256(b->qh + 32 * a);
        /* the 2 high bits for elements 0..31, 32..63, 64..95, 96..127 of this half, moved to bits 4..5 */
        const __m256i h0 = _mm256_and_si256(_mm256_slli_epi16(h, 4), m2), h1 = _mm256_and_si256(_mm256_slli_epi16(h, 2), m2);
        const __m256i h2 = _mm256_and_si256(h, m2), h3 = _mm256_and_si256(_mm256_srli_epi16(h, 2), m2);
        int8_t *o = q + 128 * a;
        store256(o, _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l0, m4), h0), off));
        store256(o + 32, _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l1, m4), h1), off));
        store256(o + 64, _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), h2), off));
        store256(o + 96, _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), h3), off));
    }
}

TARGET_AVX2 INLINE void codes_q6_K(const uint8_t *p, int8_t *q, float *sm) {
    const block_q6_K *b = (const block_q6_K *)p;
    q6_K_codes(b, q);
    const float d = half_hw(b->d);
    for (int g = 0; g < 16; g++) sm[2 * g] = d * (float)b->scales[g], sm[2 * g + 1] = 0.0f;
}

/* nb blocks of a quantized type -> codes q [nb * block elems], sm [2 * nb * block elems / 16] */
TARGET_AVX2 INLINE void codes_blocks(int type, const uint8_t *p, int64_t nb, int8_t *q, float *sm) {
#define EACH_BLOCK(fn, bytes, elems) \
    for (int64_t b = 0; b < nb; b++) fn(p + b * (bytes), q + b * (elems), sm + b * (elems) / 8); \
    break
    switch (type) {
    case GGML_Q4_0: EACH_BLOCK(codes_q4_0, sizeof(block_q4_0), QK);
    case GGML_Q4_1: EACH_BLOCK(codes_q4_1, sizeof(block_q4_1), QK);
    case GGML_Q5_0: EACH_BLOCK(codes_q5_0, sizeof(block_q5_0), QK);
    case GGML_Q5_1: EACH_BLOCK(codes_q5_1, sizeof(block_q5_1), QK);
    case GGML_Q8_0: EACH_BLOCK(codes_q8_0, sizeof(block_q8_0), QK);
    case GGML_Q2_K: EACH_BLOCK(codes_q2_K, sizeof(block_q2_K), QK_K);
    case GGML_Q3_K: EACH_BLOCK(codes_q3_K, sizeof(block_q3_K), QK_K);
    case GGML_Q4_K: EACH_BLOCK(codes_q4_K, sizeof(block_q4_K), QK_K);
    case GGML_Q5_K: EACH_BLOCK(codes_q5_K, sizeof(block_q5_K), QK_K);
    case GGML_Q6_K: EACH_BLOCK(codes_q6_K, sizeof(block_q6_K), QK_K);
    }
#undef EACH_BLOCK
}

/* ---- 3. AVX-512: 32 weights at a time in two zmm registers -----------------------------------------
 * prep_512 reads a block's scales once (and, for Q2_K, Q3_K, Q6_K, its codes into the state's buffer);
 * dec_512 then yields chunk c (weights 32 c ... 32 c + 31) as float32 in registers, for the caller to store
 * (dequant.c) or to FMA against activations (matvec.c). 4- and 5-bit types look their weights up in
 * 16-float tables d * i + m built once per block or sub-block (vpermps / vpermt2ps read the low 4 / 5
 * bits of each index lane), which costs less than converting every code to float and scaling it. */

typedef struct {
    __m512 t0, t1;    /* the block's tables (Q4_0 ... Q5_1), or d broadcast (Q8_0) */
    __m512i qh[2];    /* Q5_K: the 32 qh bytes as int32 lanes */
    float sm[32];     /* K-quants: Q4_K, Q5_K sm[c] = d sc[c], sm[8 + c] = -dmin mn[c]; Q2_K, Q3_K (s, m)
                       * per 16 interleaved, as section 2; Q6_K sm[g] = d sc[g] */
    int8_t q[QK_K];   /* Q2_K, Q3_K, Q6_K: the block's codes (section 2) */
} bstate;

TARGET_AVX512 INLINE __m512i u8x16(const uint8_t *p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)); }
TARGET_AVX512 INLINE __m512 i8x16f(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
TARGET_AVX512 INLINE __m512 iota16(float first) {
    return _mm512_add_ps(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_ps(first));
}
TARGET_AVX512 INLINE __m512 bcast(float v) { return _mm512_set1_ps(v); }

/* (d, m): a block's two adjacent halves in one vcvtph2ps */
TARGET_AVX512 INLINE __m128 half2(const ggml_half *dm) { return _mm_cvtph_ps(_mm_cvtsi32_si128((int)load_u32((const uint8_t *)dm))); }
TARGET_AVX512 INLINE __m512 lane0(__m128 v) { return _mm512_broadcastss_ps(v); }
TARGET_AVX512 INLINE __m512 lane1(__m128 v) { return _mm512_broadcastss_ps(_mm_movehdup_ps(v)); }

/* the weights of a 4-bit block: table[low nibbles of qs] (elements 0..15), table[high nibbles] (16..31) */
TARGET_AVX512 INLINE void lut32(const uint8_t *qs, __m512 table, __m512 *w) {
    const __m512i v = u8x16(qs);
    w[0] = _mm512_permutexvar_ps(v, table);
    w[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), table);
}

/* Q5 / Q5_K: 5-bit codes (nibble | 16 where the mask bit is set) into the tables lo (0..15), hi (16..31) */
TARGET_AVX512 INLINE __m512 lut16_5bit(__m512i nib, __mmask16 high, __m512 lo, __m512 hi) {
    return _mm512_permutex2var_ps(lo, _mm512_mask_or_epi32(nib, high, nib, _mm512_set1_epi32(16)), hi);
}

TARGET_AVX512 INLINE void q5_lut32(const uint8_t *qs, const uint8_t *qh, __m512 lo, __m512 hi, __m512 *w) {
    const uint32_t h = load_u32(qh);
    const __m512i v = u8x16(qs);
    w[0] = lut16_5bit(_mm512_and_si512(v, _mm512_set1_epi32(15)), (__mmask16)h, lo, hi);
    w[1] = lut16_5bit(_mm512_srli_epi32(v, 4), (__mmask16)(h >> 16), lo, hi);
}

/* Q4_K / Q5_K scales of the 8 sub-blocks: sm[c] = d * sc[c], sm[8 + c] = -dmin * mn[c] */
TARGET_AVX512 INLINE void k4_scales_512(const uint8_t *scales, const ggml_half *d_dmin, float *sm) {
    uint8_t v[16];
    k4_unpack(scales, v);
    const __m128 dm = half2(d_dmin);
    const __m512 dd = _mm512_mask_blend_ps(0xff00, lane0(dm), _mm512_sub_ps(_mm512_setzero_ps(), lane1(dm)));
    _mm512_storeu_ps(sm, _mm512_mul_ps(_mm512_cvtepi32_ps(u8x16(v)), dd));
}

/* lanes below n (n < 16) or all 16 */
TARGET_AVX512 INLINE __mmask16 first_lanes(int64_t n) { return n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1); }

/* F32 / F16 / BF16 rows: 16 weights at element e (the lanes of mask; the others 0) as float32 */
TARGET_AVX512 INLINE __m512 float16_512(int type, const uint8_t *row, int64_t e, __mmask16 mask) {
    if (type == GGML_F32) return _mm512_maskz_loadu_ps(mask, (const float *)row + e);
    const __m256i h = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)row + e);
    if (type == GGML_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); /* BF16: the top half of an f32 */
}

TARGET_AVX512 INLINE void prep_512(int type, const uint8_t *p, bstate *st) {
    switch (type) {
    case GGML_Q4_0: { /* table[i] = d * (i - 8): exactly the reference's rounding */
        st->t0 = _mm512_mul_ps(iota16(-8), bcast(half_hw(((const block_q4_0 *)p)->d)));
        break;
    }
    case GGML_Q4_1: {
        const __m128 dm = half2(&((const block_q4_1 *)p)->d);
        st->t0 = _mm512_fmadd_ps(iota16(0), lane0(dm), lane1(dm));
        break;
    }
    case GGML_Q5_0: {
        const __m512 d = bcast(half_hw(((const block_q5_0 *)p)->d));
        st->t0 = _mm512_mul_ps(iota16(-16), d), st->t1 = _mm512_mul_ps(iota16(0), d);
        break;
    }
    case GGML_Q5_1: {
        const __m128 dm = half2(&((const block_q5_1 *)p)->d);
        st->t0 = _mm512_fmadd_ps(iota16(0), lane0(dm), lane1(dm)), st->t1 = _mm512_fmadd_ps(iota16(16), lane0(dm), lane1(dm));
        break;
    }
    case GGML_Q8_0: st->t0 = bcast(half_hw(((const block_q8_0 *)p)->d)); break;
    case GGML_Q2_K: codes_q2_K(p, st->q, st->sm); break;
    case GGML_Q3_K: codes_q3_K(p, st->q, st->sm); break;
    case GGML_Q4_K: k4_scales_512(((const block_q4_K *)p)->scales, &((const block_q4_K *)p)->d, st->sm); break;
    case GGML_Q5_K: {
        const block_q5_K *b = (const block_q5_K *)p;
        k4_scales_512(b->scales, &b->d, st->sm);
        st->qh[0] = u8x16(b->qh), st->qh[1] = u8x16(b->qh + 16);
        break;
    }
    case GGML_Q6_K: {
        const block_q6_K *b = (const block_q6_K *)p;
        q6_K_codes(b, st->q);
        _mm512_storeu_ps(st->sm, _mm512_mul_ps(i8x16f(b->scales), bcast(half_hw(b->d))));
        break;
    }
    }
}

/* chunk c of a block: w[0] = weights 32 c ... + 15, w[1] = 32 c + 16 ... + 31 */
TARGET_AVX512 INLINE void dec_512(int type, const uint8_t *p, const bstate *st, int c, __m512 *w) {
    switch (type) {
    case GGML_Q4_0: lut32(((const block_q4_0 *)p)->qs, st->t0, w); break;
    case GGML_Q4_1: lut32(((const block_q4_1 *)p)->qs, st->t0, w); break;
    case GGML_Q5_0: q5_lut32(((const block_q5_0 *)p)->qs, ((const block_q5_0 *)p)->qh, st->t0, st->t1, w); break;
    case GGML_Q5_1: q5_lut32(((const block_q5_1 *)p)->qs, ((const block_q5_1 *)p)->qh, st->t0, st->t1, w); break;
    case GGML_Q8_0:
        for (int h = 0; h < 2; h++) w[h] = _mm512_mul_ps(i8x16f(((const block_q8_0 *)p)->qs + 16 * h), st->t0);
        break;
    case GGML_Q2_K: case GGML_Q3_K: /* per 16: s * q + m */
        for (int h = 0; h < 2; h++)
            w[h] = _mm512_fmadd_ps(i8x16f(st->q + 32 * c + 16 * h), bcast(st->sm[4 * c + 2 * h]), bcast(st->sm[4 * c + 2 * h + 1]));
        break;
    case GGML_Q4_K: { /* sub-block c: nibbles (c & 1) of qs[32 (c / 2) ...] */
        const __m512 table = _mm512_fmadd_ps(iota16(0), bcast(st->sm[c]), bcast(st->sm[8 + c]));
        for (int h = 0; h < 2; h++)
            w[h] = _mm512_permutexvar_ps(_mm512_srli_epi32(u8x16(((const block_q4_K *)p)->qs + 32 * (c / 2) + 16 * h), 4 * (c & 1)), table);
        break;
    }
    case GGML_Q5_K: { /* Q4_K's nibble | bit c of qh[l] << 4 */
        const __m512 s = bcast(st->sm[c]), m = bcast(st->sm[8 + c]);
        const __m512 lo = _mm512_fmadd_ps(iota16(0), s, m), hi = _mm512_fmadd_ps(iota16(16), s, m);
        for (int h = 0; h < 2; h++) {
            const __m512i v = u8x16(((const block_q5_K *)p)->qs + 32 * (c / 2) + 16 * h);
            const __m512i nib = _mm512_and_si512(_mm512_srli_epi32(v, 4 * (c & 1)), _mm512_set1_epi32(15));
            w[h] = lut16_5bit(nib, _mm512_test_epi32_mask(st->qh[h], _mm512_set1_epi32(1 << c)), lo, hi);
        }
        break;
    }
    case GGML_Q6_K: /* per 16: q * d sc */
        for (int h = 0; h < 2; h++) w[h] = _mm512_mul_ps(i8x16f(st->q + 32 * c + 16 * h), bcast(st->sm[2 * c + h]));
        break;
    }
}

/* ---- shared by the matvec kernels (matvec.c, matvec_q8.c) ---- */

/* CALL(TT) with TT the compile-time constant equal to tt (1 ... 4 or 1 ... 8) */
#define SWITCH_TT4(tt, CALL)                   \
    case 1: CALL(1); break;                    \
    case 2: CALL(2); break;                    \
    case 3: CALL(3); break;                    \
    case 4: CALL(4); break

#define SWITCH_TT4_OF(tt, CALL) switch (tt) { SWITCH_TT4(tt, CALL); }

#define SWITCH_TT8_OF(tt, CALL)                \
    switch (tt) {                              \
        SWITCH_TT4(tt, CALL);                  \
    case 5: CALL(5); break;                    \
    case 6: CALL(6); break;                    \
    case 7: CALL(7); break;                    \
    case 8: CALL(8); break;                    \
    }

/* software prefetch distance in bytes along each weight row: the hardware prefetcher alone leaves the
 * decode waiting on DRAM (measured 1.4-1.7x slower on streamed Q4_1 / Q4_K / Q8_0 weights at 0 or 1 KiB) */
#ifndef PREFETCH
#define PREFETCH 8192
#endif

#endif /* CPU_X86 */

static inline int is_float_type(int type) { return type == GGML_F32 || type == GGML_F16 || type == GGML_BF16; }

/* 0 if (type, k, row_bytes) describe valid rows, else KERR_TYPE / KERR_SHAPE */
static inline int check_rows(int type, int64_t k, int64_t row_bytes) {
    const int be = ggml_block_elems(type), bb = ggml_block_bytes(type);
    if (be == 0) return KERR_TYPE;
    if (k < 0 || k % be != 0 || row_bytes != k / be * bb) return KERR_SHAPE;
    return 0;
}

#endif
