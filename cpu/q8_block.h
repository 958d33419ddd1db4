/* One block of 32 float32 activations -> int8 q with one float scale d (the rule of cpu/quantize_q8.c):
 * d = max|x| / 127, q = round_half_even(x * (1 / d)), |q| <= 127; max|x| < 1e-30 gives d = 0, q = 0.
 * Shared by quantize_q8.c (the packed group layout of matmul_q8) and matvec_q8.c (its plain row layout),
 * so both int8 paths quantize a value to the same byte. Paths: scalar (the definition), AVX2, AVX-512;
 * all give the same bytes (see quantize_q8.c). */
#ifndef GGUF_SERVE_CPU_Q8_BLOCK_H
#define GGUF_SERVE_CPU_Q8_BLOCK_H

#include "common.h"
#include "q8.h"

#include <math.h>

#define Q8_TINY 1e-30f

typedef struct {
    int8_t q[Q8_BLOCK];
    float d;
    int sum[2]; /* sum of q over elements 0..15 and 16..31 */
} qblock;

static inline float block_scale(float amax) { return amax >= Q8_TINY ? amax / 127.0f : 0.0f; }
static inline float inverse(float d) { return d != 0.0f ? 1.0f / d : 0.0f; }

static inline void quantize_block_scalar(const float *x, qblock *out) {
    float amax = 0.0f;
    for (int i = 0; i < Q8_BLOCK; i++) amax = fmaxf(amax, fabsf(x[i]));
    out->d = block_scale(amax);
    const float id = inverse(out->d);
    out->sum[0] = out->sum[1] = 0;
    for (int i = 0; i < Q8_BLOCK; i++) {
        out->q[i] = (int8_t)nearbyintf(x[i] * id);
        out->sum[i / 16] += out->q[i];
    }
}

#if CPU_X86
TARGET_AVX2 static inline void quantize_block_avx2(const float *x, qblock *out) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4], m = _mm256_setzero_ps();
    for (int j = 0; j < 4; j++) {
        v[j] = _mm256_loadu_ps(x + 8 * j);
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[j]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    out->d = block_scale(_mm_cvtss_f32(m4));
    const __m256 id = _mm256_set1_ps(inverse(out->d));
    __m256i q[4];
    for (int j = 0; j < 4; j++) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], id));
    for (int h = 0; h < 2; h++) {
        __m256i s = _mm256_add_epi32(q[2 * h], q[2 * h + 1]);
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        out->sum[h] = _mm_cvtsi128_si32(s4);
    }
    /* packs interleave 128-bit lanes: the permutation puts the 32 bytes back in order */
    __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)out->q, b);
}

TARGET_AVX512 static inline void quantize_block_avx512(const float *x, qblock *out) {
    const __m512 lo = _mm512_loadu_ps(x), hi = _mm512_loadu_ps(x + 16);
    out->d = block_scale(_mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi))));
    const __m512 id = _mm512_set1_ps(inverse(out->d));
    const __m512i qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, id)), qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, id));
    out->sum[0] = _mm512_reduce_add_epi32(qlo);
    out->sum[1] = _mm512_reduce_add_epi32(qhi);
    _mm_storeu_si128((__m128i *)out->q, _mm512_cvtepi32_epi8(qlo));
    _mm_storeu_si128((__m128i *)(out->q + 16), _mm512_cvtepi32_epi8(qhi));
}
#endif

#endif
