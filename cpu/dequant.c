/* dequant_rows: out[r, :] = W[row] as float32 [k] for row = rows[r] (r < nrows; the embedding lookup reads
 * only the token rows) or row = row0 + r when rows is NULL (a contiguous tile for sgemm).
 *
 * W: rows of row_bytes = k / block * block_bytes bytes in the GGUF block format of `type` (all 13 types of
 * cpu/blocks.h, whose header describes every layout; F32, F16, BF16 are blocks of one element).
 * out: [nrows, k] float32, row-major. Rows are shared among the OpenMP team (static, one row each at a time)
 * when the call holds at least 64 Ki elements; smaller calls stay on the calling thread.
 *
 * Paths (cpu_level()):
 *   scalar  deq_row_scalar of blocks.h, the definition: bit-exact with gguf.quants.dequantize on x86-64.
 *   AVX2    (+ FMA, F16C) blocks -> int8 codes + per-16 (scale, offset) (blocks.h section 2), then
 *           vpmovsxbd / vcvtdq2ps / one FMA per 8 floats; F16 by vcvtph2ps, BF16 by a 16-bit shift.
 *   AVX-512 (F/BW/VL/DQ) prep_512 / dec_512 of blocks.h section 3: 32 weights at a time in registers
 *           (table lookups for the 4- and 5-bit types), float tails by masked loads. The VNNI level
 *           takes this path (dequantization has no integer dot product to speed up).
 * Tolerance: the SIMD paths compute s * q + m with one rounding (FMA) where the reference rounds twice
 * (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K): within 1 ulp of max(|s q|, |m|); the other types are exact.
 */
#include "blocks.h"

#define UNIT 256 /* AVX2: weights decoded into codes at a time (a K-quant super-block, 8 small blocks) */

/* ---- AVX2 ---------------------------------------------------------------------------------------- */
#if CPU_X86

/* out[16 g + i] = sm[2 g] * q[16 g + i] + sm[2 g + 1] for g < groups */
TARGET_AVX2 static void codes_to_f32_avx2(const int8_t *q, const float *sm, int64_t groups, float *out) {
    for (int64_t g = 0; g < groups; g++) {
        const __m256 s = _mm256_broadcast_ss(sm + 2 * g), m = _mm256_broadcast_ss(sm + 2 * g + 1);
        for (int h = 0; h < 2; h++) {
            const __m128i q8 = _mm_loadl_epi64((const __m128i *)(q + 16 * g + 8 * h));
            const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
            _mm256_storeu_ps(out + 16 * g + 8 * h, _mm256_fmadd_ps(v, s, m));
        }
    }
}

TARGET_AVX2 static void quant_row_avx2(int type, const uint8_t *row, int64_t k, float *out) {
    const int be = ggml_block_elems(type), bb = ggml_block_bytes(type);
    int8_t q[UNIT];
    float sm[UNIT / 8];
    for (int64_t e = 0; e < k; e += UNIT) {
        const int64_t n = k - e < UNIT ? k - e : UNIT; /* elements of this unit, a multiple of be */
        codes_blocks(type, row + e / be * bb, n / be, q, sm);
        codes_to_f32_avx2(q, sm, n / 16, out + e);
    }
}

TARGET_AVX2 static void row_avx2(int type, const uint8_t *row, int64_t k, float *out) {
    const uint16_t *h = (const uint16_t *)row;
    int64_t i = 0;
    switch (type) {
    case GGML_F32: memcpy(out, row, 4 * k); return;
    case GGML_F16:
        for (; i + 8 <= k; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
        for (; i < k; i++) out[i] = fp16_to_fp32(h[i]);
        return;
    case GGML_BF16:
        for (; i + 8 <= k; i += 8) {
            const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(h + i)));
            _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
        }
        for (; i < k; i++) out[i] = bf16_to_fp32(h[i]);
        return;
    default: quant_row_avx2(type, row, k, out);
    }
}

/* ---- AVX-512 ------------------------------------------------------------------------------------- */

/* quantized rows: each block's scales once (prep_512), then 32 weights at a time (blocks.h, section 3) */
TARGET_AVX512 INLINE void quant_row_512_of(int type, const uint8_t *row, int64_t k, float *out) {
    const int be = ggml_block_elems(type), bb = ggml_block_bytes(type);
    for (int64_t b = 0; b < k / be; b++) {
        bstate st;
        prep_512(type, row + b * bb, &st);
#pragma GCC unroll 8
        for (int c = 0; c < be / 32; c++) {
            __m512 w[2];
            dec_512(type, row + b * bb, &st, c, w);
            _mm512_storeu_ps(out + b * be + 32 * c, w[0]);
            _mm512_storeu_ps(out + b * be + 32 * c + 16, w[1]);
        }
    }
}

/* one copy of the loop per type, so that prep_512 / dec_512 resolve their switch at compile time */
TARGET_AVX512 static void quant_row_512(int type, const uint8_t *row, int64_t k, float *out) {
    switch (type) {
    case GGML_Q4_0: quant_row_512_of(GGML_Q4_0, row, k, out); break;
    case GGML_Q4_1: quant_row_512_of(GGML_Q4_1, row, k, out); break;
    case GGML_Q5_0: quant_row_512_of(GGML_Q5_0, row, k, out); break;
    case GGML_Q5_1: quant_row_512_of(GGML_Q5_1, row, k, out); break;
    case GGML_Q8_0: quant_row_512_of(GGML_Q8_0, row, k, out); break;
    case GGML_Q2_K: quant_row_512_of(GGML_Q2_K, row, k, out); break;
    case GGML_Q3_K: quant_row_512_of(GGML_Q3_K, row, k, out); break;
    case GGML_Q4_K: quant_row_512_of(GGML_Q4_K, row, k, out); break;
    case GGML_Q5_K: quant_row_512_of(GGML_Q5_K, row, k, out); break;
    case GGML_Q6_K: quant_row_512_of(GGML_Q6_K, row, k, out); break;
    }
}

TARGET_AVX512 static void row_512(int type, const uint8_t *row, int64_t k, float *out) {
    if (type == GGML_F32) {
        memcpy(out, row, 4 * k);
    } else if (type == GGML_F16 || type == GGML_BF16) {
        for (int64_t i = 0; i < k; i += 16) {
            const __mmask16 mask = first_lanes(k - i);
            _mm512_mask_storeu_ps(out + i, mask, float16_512(type, row, i, mask));
        }
    } else {
        quant_row_512(type, row, k, out);
    }
}

#endif /* CPU_X86 */

/* ---- entry --------------------------------------------------------------------------------------- */

static void dequant_row(cpu_level_t level, int type, const uint8_t *row, int64_t k, float *out) {
#if CPU_X86
    if (level >= LEVEL_AVX512) {
        row_512(type, row, k, out);
        return;
    }
    if (level == LEVEL_AVX2) {
        row_avx2(type, row, k, out);
        return;
    }
#endif
    deq_row_scalar(type, row, k, out);
}

int cpu_dequant_rows(int type, const uint8_t *w, int64_t row_bytes, int64_t k, const int32_t *rows,
                     int64_t row0, int64_t nrows, float *out) {
    const int rc = check_rows(type, k, row_bytes);
    if (rc) return rc;
    const cpu_level_t level = cpu_level();
#pragma omp parallel for schedule(static) num_threads(cpu_threads()) if (nrows * k >= 65536)
    for (int64_t r = 0; r < nrows; r++) {
        const int64_t src = rows ? rows[r] : row0 + r;
        dequant_row(level, type, w + src * row_bytes, k, out + r * k);
    }
    return 0;
}
