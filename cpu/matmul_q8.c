/* matmul_q8: y[i, j] (row stride ldy) = sum_k W[j, k] x[i, k] for i < t, j < n, with x already quantized
 * to int8 blocks by quantize_q8.c (cpu/q8.h) and W in GGUF blocks: the prefill / large-batch path.
 *
 * Every weight type is brought to one form per 32 values: unsigned integers u (the nibbles, 5- or 6-bit
 * values, or Q8_0's bytes) and per block (per half block for Q6_K) a scale dw and an offset mw with
 * w = dw * u + mw:
 *   Q4_0 u = q, dw = d, mw = -8 d          Q4_1 u = q, dw = d, mw = m
 *   Q5_0 u = q, dw = d, mw = -16 d         Q5_1 u = q, dw = d, mw = m
 *   Q8_0 u = q + 128 (VNNI), mw = -128 d; signed q and the sign trick on AVX2 / AVX-512 (mw = 0)
 *   Q4_K, Q5_K  sub-block j: dw = d * sc_j, mw = -dmin * m_j
 *   Q6_K        half block h (16 values): dw = d * sc_h, mw = -32 d * sc_h
 * so that, with the activations' block scale da and sa = da * sum(q):
 *   y = sum over blocks of dw * da * (sum u * q)  +  mw * sa        (integer dot, two float FMAs)
 *
 * SIMD paths (AVX2, AVX-512 F/BW, AVX-512 VNNI) first unpack a tile of up to 32 weight rows (<= 256 KiB,
 * it stays in L2 while all t activation rows pass over it) into that form, in the activations' layout:
 * per 512 values [8 chunks][16 blocks][4] bytes of u, then dw[H][16] and mw[H][16] floats (H = 2 for
 * Q6_K, else 1), 640 or 768 bytes. The unpacking (AVX2 at every SIMD level: a block's 32 values in a
 * ymm, 8 blocks transposed as 8 x 8 four-byte chunks) costs 0.15..0.2 ns a weight, once a call. Then lane
 * b of a 32-bit vector accumulates block b's integer dot with no horizontal additions:
 *   VNNI      vpdpbusd (u8 weights x s8 activations, 4 products into each int32 lane), 4 tile rows x 3
 *             activation rows of zmm accumulators per step, 7 loads for 12 vpdpbusd;
 *   AVX-512   vpmaddubsw + vpmaddwd (u8 x s8 pair sums stay inside int16: 63 * 127 * 2 < 32767; Q8_0
 *             takes |w| and x negated where w < 0: 128 * 127 * 2 < 32767), 4 x 3 zmm;
 *   AVX2      the same on the two ymm halves of each group, 2 x 2 ymm.
 * Per 16 blocks and (row, activation row) pair: 8 integer steps, then convert, one multiply (dw * da)
 * and two FMAs, and one horizontal sum per output at the end. The OpenMP team shares the tiles.
 * The scalar path is the readable definition: it reads the GGUF blocks and the packed activations
 * directly, one output at a time, in integers per block and float across blocks.
 *
 * Exactness. Integer dots are exact on every path; the float sums over blocks differ in order only,
 * so SIMD paths equal the scalar path to float rounding (|diff| <= (k/32 + 4) 2^-23 sum|w||x^|).
 * Tolerance against float math on the dequantized weights: with |x - x^| <= max|x_b| / 254 per value
 * (quantize_q8.c), |y - y^| <= sum_j |w_j| max|x_b(j)| / 254: for Gaussian x (a 32-value max of ~2.5
 * sigma against a mean |x| of 0.8 sigma) about 1.3% of sum |w||x|. The rounding errors of independent
 * values cancel in part: measured on random x and weights (t = 128), the largest error is 1.3e-3..1.5e-3
 * of sum |w||x| at k = 896 and 6.6e-4..7.3e-4 at k = 4864 (rms 1.4e-4..2.8e-4), 6..12% of the bound
 * (tests/kernels/test_cpu_q8.py asserts the bound; bench/q8_matmul.py prints the error).
 *
 * Speed (bench/q8_matmul.py, one Zen 4 core, AVX-512 VNNI): 105..190 GOP/s, 1.3..2.6x NumPy's float32
 * sgemm on the dequantized weight; ~270 GOP/s with everything in L1, against 430 for bare vpdpbusd.
 */
#include "common.h"
#include "kernels.h"
#include "q8.h"

#include <omp.h>
#include <stdlib.h>

#define TILE_ROWS 32            /* weight rows unpacked at once (fewer when a row is long) */
#define TILE_BYTES (256 << 10)  /* an unpacked tile fits in L2 */

static int supported(int type) {
    switch (type) {
    case GGML_Q4_0: case GGML_Q4_1: case GGML_Q5_0: case GGML_Q5_1: case GGML_Q8_0:
    case GGML_Q4_K: case GGML_Q5_K: case GGML_Q6_K: return 1;
    default: return 0;
    }
}

int cpu_matmul_q8_supported(int type) { return supported(type); }

/* 6-bit scale and min of sub-block j of a Q4_K / Q5_K super-block */
static void scale_min_k4(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* ---- scalar: the definition ------------------------------------------------------------------- */

/* sum_{p < len} w[p] * xq[e0 + p], xq a packed activation row */
static int idot(const int *w, const uint8_t *xr, int64_t e0, int len) {
    int s = 0;
    for (int p = 0; p < len; p++) s += w[p] * (int8_t)xr[q8_qs_offset(e0 + p)];
    return s;
}

static float xd(const uint8_t *xr, int64_t b) { return q8_block_float(xr, b, Q8_OFF_D); }
static float xs(const uint8_t *xr, int64_t b) { return q8_block_float(xr, b, Q8_OFF_S); }

/* low nibbles are values 0..15 of a 32-block, high nibbles 16..31 */
static void nibbles(const uint8_t *qs, int q[32]) {
    for (int j = 0; j < 16; j++) {
        q[j] = qs[j] & 0xf;
        q[j + 16] = qs[j] >> 4;
    }
}

static void high_bits(const uint8_t qh4[4], int q[32]) {
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    for (int j = 0; j < 32; j++) q[j] |= ((qh >> j) & 1) << 4;
}

static float dot_scalar(int type, const uint8_t *wr, const uint8_t *xr, int64_t k) {
    float sum = 0.0f;
    int q[32];
    for (int64_t b = 0; b < k / 32; b++) {
        const int64_t e = 32 * b;
        switch (type) {
        case GGML_Q4_0: {
            const block_q4_0 *blk = (const block_q4_0 *)wr + b;
            nibbles(blk->qs, q);
            for (int j = 0; j < 32; j++) q[j] -= 8;
            sum += fp16_to_fp32(blk->d) * xd(xr, b) * (float)idot(q, xr, e, 32);
            break;
        }
        case GGML_Q4_1: {
            const block_q4_1 *blk = (const block_q4_1 *)wr + b;
            nibbles(blk->qs, q);
            sum += fp16_to_fp32(blk->d) * xd(xr, b) * (float)idot(q, xr, e, 32) + fp16_to_fp32(blk->m) * xs(xr, b);
            break;
        }
        case GGML_Q5_0: {
            const block_q5_0 *blk = (const block_q5_0 *)wr + b;
            nibbles(blk->qs, q);
            high_bits(blk->qh, q);
            for (int j = 0; j < 32; j++) q[j] -= 16;
            sum += fp16_to_fp32(blk->d) * xd(xr, b) * (float)idot(q, xr, e, 32);
            break;
        }
        case GGML_Q5_1: {
            const block_q5_1 *blk = (const block_q5_1 *)wr + b;
            nibbles(blk->qs, q);
            high_bits(blk->qh, q);
            sum += fp16_to_fp32(blk->d) * xd(xr, b) * (float)idot(q, xr, e, 32) + fp16_to_fp32(blk->m) * xs(xr, b);
            break;
        }
        case GGML_Q8_0: {
            const block_q8_0 *blk = (const block_q8_0 *)wr + b;
            for (int j = 0; j < 32; j++) q[j] = blk->qs[j];
            sum += fp16_to_fp32(blk->d) * xd(xr, b) * (float)idot(q, xr, e, 32);
            break;
        }
        case GGML_Q4_K: case GGML_Q5_K: { /* sub-block j: low nibbles of qs[32 (j / 2) ...] for even j */
            const int j = (int)(b % 8);
            const uint8_t *base = wr + b / 8 * (type == GGML_Q4_K ? sizeof(block_q4_K) : sizeof(block_q5_K));
            const block_q4_K *k4 = (const block_q4_K *)base;
            const block_q5_K *k5 = (const block_q5_K *)base;
            const uint8_t *qs = (type == GGML_Q4_K ? k4->qs : k5->qs) + 32 * (j / 2);
            int sc, m;
            scale_min_k4(type == GGML_Q4_K ? k4->scales : k5->scales, j, &sc, &m);
            for (int l = 0; l < 32; l++) {
                q[l] = (j % 2 ? qs[l] >> 4 : qs[l] & 0xf);
                if (type == GGML_Q5_K) q[l] |= ((k5->qh[l] >> j) & 1) << 4;
            }
            sum += fp16_to_fp32(k4->d) * (float)sc * xd(xr, b) * (float)idot(q, xr, e, 32) -
                   fp16_to_fp32(k4->dmin) * (float)m * xs(xr, b);
            break;
        }
        case GGML_Q6_K: { /* value v of a 128-half: ql nibble (v % 64 < 32 ? ql[v % 32] : ql[32 + v % 32]) ... */
            const block_q6_K *blk = (const block_q6_K *)wr + b / 8;
            const int v0 = (int)(b % 8) * 32, half = v0 / 128, v = v0 % 128;
            const uint8_t *ql = blk->ql + 64 * half + (v % 64), *qh = blk->qh + 32 * half;
            for (int l = 0; l < 32; l++) {
                const int low = v < 64 ? ql[l] & 0xf : ql[l] >> 4;
                q[l] = (low | ((qh[l] >> (2 * (v / 32))) & 3) << 4) - 32;
            }
            const float d = fp16_to_fp32(blk->d) * xd(xr, b);
            sum += d * (float)blk->scales[v0 / 16] * (float)idot(q, xr, e, 16) +
                   d * (float)blk->scales[v0 / 16 + 1] * (float)idot(q + 16, xr, e + 16, 16);
            break;
        }
        }
    }
    return sum;
}

static void matmul_scalar(int type, const uint8_t *w, int64_t row_bytes, int64_t n, int64_t k, const uint8_t *xq,
                          int64_t t, float *y, int64_t ldy) {
    const int64_t xrow = q8_row_bytes(k);
#pragma omp parallel for schedule(dynamic, 4) num_threads(cpu_threads())
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < t; i++) y[i * ldy + j] = dot_scalar(type, w + j * row_bytes, xq + i * xrow, k);
}

/* ---- tiles: weight rows unpacked into the interleaved form the SIMD kernels read -------------- */

typedef struct {
    int type, halves; /* halves: 2 for Q6_K (a scale per 16 values), else 1 */
    int vnni;         /* Q8_0's unpacked form depends on the kernel */
    int64_t k, groups;
    int64_t group_bytes, row_bytes; /* of the unpacked tile */
} tile_shape;

static tile_shape make_shape(int type, int64_t k, cpu_level_t level) {
    tile_shape s = {type, type == GGML_Q6_K ? 2 : 1, level == LEVEL_VNNI, k, q8_groups(k), 0, 0};
    s.group_bytes = Q8_GROUP + 2 * 64 * s.halves;
    s.row_bytes = s.groups * s.group_bytes;
    return s;
}

#define ALWAYS_INLINE inline __attribute__((always_inline))

#if CPU_X86
/* The packer runs at every SIMD level (AVX-512 hosts have AVX2): each 32-block becomes 32 bytes in a
 * ymm, 8 blocks are transposed as an 8 x 8 matrix of 4-byte chunks, and the 8 rows are the chunks of
 * lanes 0..7 or 8..15 of a group record. */

TARGET_AVX2 static ALWAYS_INLINE __m256i low_high_nibbles(__m128i q) { /* values 0..15, then 16..31 */
    const __m128i m = _mm_set1_epi8(0xf);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m), _mm_and_si128(q, m));
}

TARGET_AVX2 static ALWAYS_INLINE __m256i nibbles_of(__m256i q, int high) {
    return _mm256_and_si256(high ? _mm256_srli_epi16(q, 4) : q, _mm256_set1_epi8(0xf));
}

TARGET_AVX2 static ALWAYS_INLINE __m256i fifth_bits(const uint8_t qh4[4]) { /* bit j of qh -> 16 in byte j */
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    const __m256i spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32((int)qh), _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303));
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(16));
}

/* 32-block b of a weight row -> its 32 values u, and dw, mw per half block (equal halves except Q6_K) */
TARGET_AVX2 static __m256i unpack_block(const tile_shape *s, const uint8_t *wr, int64_t b, float dw[2], float mw[2]) {
    __m256i u;
    float d, m;
    switch (s->type) {
    case GGML_Q4_0: {
        const block_q4_0 *blk = (const block_q4_0 *)wr + b;
        u = low_high_nibbles(_mm_loadu_si128((const __m128i *)blk->qs));
        d = fp16_to_fp32(blk->d), m = -8.0f * d;
        break;
    }
    case GGML_Q4_1: {
        const block_q4_1 *blk = (const block_q4_1 *)wr + b;
        u = low_high_nibbles(_mm_loadu_si128((const __m128i *)blk->qs));
        d = fp16_to_fp32(blk->d), m = fp16_to_fp32(blk->m);
        break;
    }
    case GGML_Q5_0: {
        const block_q5_0 *blk = (const block_q5_0 *)wr + b;
        u = _mm256_or_si256(low_high_nibbles(_mm_loadu_si128((const __m128i *)blk->qs)), fifth_bits(blk->qh));
        d = fp16_to_fp32(blk->d), m = -16.0f * d;
        break;
    }
    case GGML_Q5_1: {
        const block_q5_1 *blk = (const block_q5_1 *)wr + b;
        u = _mm256_or_si256(low_high_nibbles(_mm_loadu_si128((const __m128i *)blk->qs)), fifth_bits(blk->qh));
        d = fp16_to_fp32(blk->d), m = fp16_to_fp32(blk->m);
        break;
    }
    case GGML_Q8_0: { /* VNNI: u = q + 128 with the offset in mw; otherwise the signed bytes as they are */
        const block_q8_0 *blk = (const block_q8_0 *)wr + b;
        u = _mm256_loadu_si256((const __m256i *)blk->qs);
        d = fp16_to_fp32(blk->d), m = 0.0f;
        if (s->vnni) u = _mm256_xor_si256(u, _mm256_set1_epi8((char)0x80)), m = -128.0f * d;
        break;
    }
    case GGML_Q4_K: case GGML_Q5_K: { /* sub-block j: low nibbles of qs[32 (j / 2) ...] for even j */
        const int j = (int)(b % 8);
        const uint8_t *base = wr + b / 8 * (s->type == GGML_Q4_K ? sizeof(block_q4_K) : sizeof(block_q5_K));
        const block_q4_K *k4 = (const block_q4_K *)base;
        const block_q5_K *k5 = (const block_q5_K *)base;
        const uint8_t *qs = s->type == GGML_Q4_K ? k4->qs : k5->qs;
        u = nibbles_of(_mm256_loadu_si256((const __m256i *)(qs + 32 * (j / 2))), j % 2);
        if (s->type == GGML_Q5_K) { /* bit j of qh[l] is value l's fifth bit */
            const __m256i bit = _mm256_set1_epi8((char)(1 << j));
            const __m256i qh = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)k5->qh), bit);
            u = _mm256_or_si256(u, _mm256_and_si256(_mm256_cmpeq_epi8(qh, bit), _mm256_set1_epi8(16)));
        }
        int sc, mn;
        scale_min_k4(s->type == GGML_Q4_K ? k4->scales : k5->scales, j, &sc, &mn);
        d = fp16_to_fp32(k4->d) * (float)sc, m = -fp16_to_fp32(k4->dmin) * (float)mn;
        break;
    }
    default: { /* Q6_K: value v of a 128-half: a nibble of ql, two bits of qh at 2 (v / 32) */
        const block_q6_K *blk = (const block_q6_K *)wr + b / 8;
        const int v0 = (int)(b % 8) * 32, half = v0 / 128, v = v0 % 128;
        const __m256i ql = _mm256_loadu_si256((const __m256i *)(blk->ql + 64 * half + v % 64));
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(blk->qh + 32 * half));
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * (v / 32)), _mm256_set1_epi8(3));
        u = _mm256_or_si256(nibbles_of(ql, v >= 64), _mm256_slli_epi16(hi, 4));
        for (int h = 0; h < 2; h++) {
            dw[h] = fp16_to_fp32(blk->d) * (float)blk->scales[v0 / 16 + h];
            mw[h] = -32.0f * dw[h];
        }
        return u;
    }
    }
    dw[0] = dw[1] = d;
    mw[0] = mw[1] = m;
    return u;
}

/* rows r[0..7] of 8 dwords -> r[c] = dword c of every row */
TARGET_AVX2 static void transpose8(__m256i r[8]) {
    __m256i t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4)
        for (int j = 0; j < 2; j++) {
            u[i + j] = _mm256_unpacklo_epi64(t[i + j], t[i + j + 2]);     /* dwords 0 (j = 0), 2 */
            u[i + j + 2] = _mm256_unpackhi_epi64(t[i + j], t[i + j + 2]); /* dwords 1, 3 */
        }
    /* u[0..3] rows 0..3: dwords 0, 2, 1, 3 in the low 128 bits and 4, 6, 5, 7 in the high; u[4..7] rows 4..7 */
    static const int order[4] = {0, 2, 1, 3};
    for (int c = 0; c < 4; c++) {
        r[c] = _mm256_permute2x128_si256(u[order[c]], u[4 + order[c]], 0x20);
        r[c + 4] = _mm256_permute2x128_si256(u[order[c]], u[4 + order[c]], 0x31);
    }
}

TARGET_AVX2 static void pack_row(const tile_shape *s, const uint8_t *wr, uint8_t *tr) {
    const int64_t nb = s->k / 32;
    for (int64_t g = 0; g < s->groups; g++) {
        uint8_t *rec = tr + g * s->group_bytes;
        float *f = (float *)(rec + Q8_GROUP); /* dw[H][16], then mw[H][16] */
        for (int half = 0; half < 2; half++) {
            __m256i u[8];
            for (int m = 0; m < 8; m++) {
                const int lane = 8 * half + m;
                const int64_t b = g * Q8_LANES + lane;
                float dw[2] = {0, 0}, mw[2] = {0, 0};
                u[m] = b < nb ? unpack_block(s, wr, b, dw, mw) : _mm256_setzero_si256(); /* zero past k */
                for (int h = 0; h < s->halves; h++) {
                    f[16 * h + lane] = dw[h];
                    f[16 * (s->halves + h) + lane] = mw[h];
                }
            }
            transpose8(u);
            for (int c = 0; c < 8; c++) _mm256_storeu_si256((__m256i *)(rec + 64 * c + 32 * half), u[c]);
        }
    }
}

/* rows [0, rows) of w into tile rows [0, rows); rows up to `padded` are zero (they add 0 to nothing) */
static void pack_tile(const tile_shape *s, const uint8_t *w, int64_t w_row_bytes, int rows, int padded, uint8_t *tile) {
    for (int r = 0; r < rows; r++) pack_row(s, w + r * w_row_bytes, tile + r * s->row_bytes);
    memset(tile + rows * s->row_bytes, 0, (padded - rows) * s->row_bytes);
}
#endif

/* ---- SIMD kernels: R tile rows x C activation rows over all of k ------------------------------- */

typedef struct {
    const uint8_t *w;  /* first of R tile rows */
    int64_t wrow, wgroup;
    const uint8_t *x;  /* first of C packed activation rows */
    int64_t xrow, groups;
    float *y;          /* y[i, j0 + r0] */
    int64_t ldy;
    int valid;         /* rows of the R that exist */
} kargs;

#define MAXR 4
#define MAXC 3

#if CPU_X86
/* H = halves; the offset term: mw[h] * sa, sa = s (H = 1) or s16[h] (H = 2) */
#define SA_OFF(H, h) ((H) == 1 ? Q8_OFF_S : Q8_OFF_S16 + 64 * (h))

/* the sums of 4 vectors */
TARGET_AVX512 static ALWAYS_INLINE __m128 sum4(__m512 f0, __m512 f1, __m512 f2, __m512 f3) {
#define HALVES(v) _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1))
    const __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(HALVES(f0), HALVES(f1)), _mm256_hadd_ps(HALVES(f2), HALVES(f3)));
#undef HALVES
    return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

/* y[i, r0 .. r0 + 4) = v, for the rows of the 4 that exist */
TARGET_AVX2 static ALWAYS_INLINE void put4(const kargs *p, int i, __m128 v) {
    float *y = p->y + i * p->ldy;
    if (p->valid >= 4) {
        _mm_storeu_ps(y, v);
        return;
    }
    float tmp[4];
    _mm_storeu_ps(tmp, v);
    for (int r = 0; r < p->valid; r++) y[r] = tmp[r];
}

/* zmm kernels, 4 tile rows x C <= 3 activation rows; OP picks the integer step:
 *   ZMM_VNNI    vpdpbusd (u8 x s8, 4 products into each int32)
 *   ZMM_MADD    vpmaddubsw (u8 x s8 pairs -> int16) then vpmaddwd with ones (-> int32 per 4 bytes)
 *   ZMM_SIGNED  the same on |w| and x negated where w < 0 (Q8_0 without VNNI; no offset term)
 * Named accumulators, and vpdpbusd in an asm statement (acc in and out, weights and activations in
 * registers): with the intrinsic, gcc 12 reloads the weights and copies accumulators around every
 * step, and runs at 60% of this speed. */
enum { ZMM_VNNI, ZMM_MADD, ZMM_SIGNED };

TARGET_AVX512 static ALWAYS_INLINE __m512i zmm_step(const int OP, __m512i acc, __m512i w, __mmask64 neg, __m512i x) {
    if (OP == ZMM_VNNI) {
        __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(w), "v"(x));
        return acc;
    }
    if (OP == ZMM_SIGNED) x = _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x);
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(w, x), _mm512_set1_epi16(1)));
}

#define LOAD_F(base, off) _mm512_loadu_ps((const float *)((base) + (off)))
#define FOUR(X, i) X(0, i) X(1, i) X(2, i) X(3, i)
#define ZERO_I(r, i) a##r##i = _mm512_setzero_si512();
#define DOT(r, i) a##r##i = zmm_step(OP, a##r##i, w##r, n##r, x);
#define SCALE(r, i) f##r##i = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a##r##i), _mm512_mul_ps(dw##r, d), f##r##i);
#define OFFSET(r, i) f##r##i = _mm512_fmadd_ps(mw##r, sa, f##r##i);
#define LOAD_W(r) \
    w##r = _mm512_loadu_si512(wg + r * wr + 64 * c); \
    if (OP == ZMM_SIGNED) n##r = _mm512_movepi8_mask(w##r), w##r = _mm512_abs_epi8(w##r);
TARGET_AVX512 static ALWAYS_INLINE void kern_zmm(const kargs *p, const int C, const int H, const int OP) {
    const int64_t wr = p->wrow, xr = p->xrow;
    __m512 f00, f10, f20, f30, f01, f11, f21, f31, f02, f12, f22, f32;
    f00 = f10 = f20 = f30 = f01 = f11 = f21 = f31 = f02 = f12 = f22 = f32 = _mm512_setzero_ps();
    for (int64_t g = 0; g < p->groups; g++) {
        const uint8_t *wg = p->w + g * p->wgroup, *xg = p->x + g * Q8_GROUP_BYTES;
        for (int h = 0; h < H; h++) {
            __m512i a00, a10, a20, a30, a01, a11, a21, a31, a02, a12, a22, a32;
            FOUR(ZERO_I, 0) FOUR(ZERO_I, 1) FOUR(ZERO_I, 2)
#pragma GCC unroll 8
            for (int c = 8 / H * h; c < 8 / H * (h + 1); c++) {
                __m512i w0, w1, w2, w3;
                __mmask64 n0 = 0, n1 = 0, n2 = 0, n3 = 0;
                LOAD_W(0) LOAD_W(1) LOAD_W(2) LOAD_W(3)
                __m512i x = _mm512_loadu_si512(xg + 64 * c);
                FOUR(DOT, 0)
                if (C > 1) {
                    x = _mm512_loadu_si512(xg + xr + 64 * c);
                    FOUR(DOT, 1)
                }
                if (C > 2) {
                    x = _mm512_loadu_si512(xg + 2 * xr + 64 * c);
                    FOUR(DOT, 2)
                }
            }
            const int off = Q8_GROUP + 64 * h;
            const __m512 dw0 = LOAD_F(wg, off), dw1 = LOAD_F(wg + wr, off), dw2 = LOAD_F(wg + 2 * wr, off),
                         dw3 = LOAD_F(wg + 3 * wr, off);
            __m512 d = LOAD_F(xg, Q8_OFF_D);
            FOUR(SCALE, 0)
            if (C > 1) {
                d = LOAD_F(xg + xr, Q8_OFF_D);
                FOUR(SCALE, 1)
            }
            if (C > 2) {
                d = LOAD_F(xg + 2 * xr, Q8_OFF_D);
                FOUR(SCALE, 2)
            }
        }
        for (int h = 0; h < H && OP != ZMM_SIGNED; h++) {
            const int off = Q8_GROUP + 64 * (H + h), soff = SA_OFF(H, h);
            const __m512 mw0 = LOAD_F(wg, off), mw1 = LOAD_F(wg + wr, off), mw2 = LOAD_F(wg + 2 * wr, off),
                         mw3 = LOAD_F(wg + 3 * wr, off);
            __m512 sa = LOAD_F(xg, soff);
            FOUR(OFFSET, 0)
            if (C > 1) {
                sa = LOAD_F(xg + xr, soff);
                FOUR(OFFSET, 1)
            }
            if (C > 2) {
                sa = LOAD_F(xg + 2 * xr, soff);
                FOUR(OFFSET, 2)
            }
        }
    }
    put4(p, 0, sum4(f00, f10, f20, f30));
    if (C > 1) put4(p, 1, sum4(f01, f11, f21, f31));
    if (C > 2) put4(p, 2, sum4(f02, f12, f22, f32));
}
#undef LOAD_W
#undef DOT
#undef SCALE
#undef OFFSET
#undef ZERO_I

TARGET_AVX2 static float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* AVX2: the 16 lanes of a group as two ymm halves (blocks 0..7 at byte 0 of each 64, 8..15 at byte 32) */
TARGET_AVX2 static ALWAYS_INLINE void kern_avx2(const kargs *p, const int R, const int C, const int H, const int SIGNED) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 f[MAXR][MAXC];
    for (int r = 0; r < R; r++)
        for (int i = 0; i < C; i++) f[r][i] = _mm256_setzero_ps();
    for (int64_t g = 0; g < p->groups; g++) {
        const uint8_t *wg = p->w + g * p->wgroup, *xg = p->x + g * Q8_GROUP_BYTES;
        for (int lane = 0; lane < 64; lane += 32)
            for (int h = 0; h < H; h++) {
                __m256i acc[MAXR][MAXC];
                for (int r = 0; r < R; r++)
                    for (int i = 0; i < C; i++) acc[r][i] = _mm256_setzero_si256();
                for (int c = h * 8 / H; c < (h + 1) * 8 / H; c++) {
                    __m256i wv[MAXR], ws[MAXR];
                    for (int r = 0; r < R; r++) {
                        ws[r] = _mm256_loadu_si256((const __m256i *)(wg + r * p->wrow + 64 * c + lane));
                        wv[r] = SIGNED ? _mm256_abs_epi8(ws[r]) : ws[r];
                    }
                    for (int i = 0; i < C; i++) {
                        const __m256i a = _mm256_loadu_si256((const __m256i *)(xg + i * p->xrow + 64 * c + lane));
                        for (int r = 0; r < R; r++) {
                            const __m256i s16 = _mm256_maddubs_epi16(wv[r], SIGNED ? _mm256_sign_epi8(a, ws[r]) : a);
                            acc[r][i] = _mm256_add_epi32(acc[r][i], _mm256_madd_epi16(s16, ones));
                        }
                    }
                }
                for (int i = 0; i < C; i++) {
                    const __m256 da = _mm256_loadu_ps((const float *)(xg + i * p->xrow + Q8_OFF_D + lane));
                    for (int r = 0; r < R; r++) {
                        const __m256 dw =
                            _mm256_loadu_ps((const float *)(wg + r * p->wrow + Q8_GROUP + 64 * h + lane));
                        f[r][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][i]), _mm256_mul_ps(dw, da), f[r][i]);
                    }
                }
                if (!SIGNED)
                    for (int i = 0; i < C; i++) {
                        const __m256 sa = _mm256_loadu_ps((const float *)(xg + i * p->xrow + SA_OFF(H, h) + lane));
                        for (int r = 0; r < R; r++) {
                            const __m256 mw =
                                _mm256_loadu_ps((const float *)(wg + r * p->wrow + Q8_GROUP + 64 * (H + h) + lane));
                            f[r][i] = _mm256_fmadd_ps(mw, sa, f[r][i]);
                        }
                    }
            }
    }
    for (int r = 0; r < R && r < p->valid; r++)
        for (int i = 0; i < C; i++) p->y[i * p->ldy + r] = hsum256(f[r][i]);
}

/* register blocks: R tile rows x C activation rows per kernel call */
#define AVX2_R 2
#define AVX2_C 2

/* one instance per (activation rows c <= C, halves, op); the driver picks by the rows left */
#define VNNI_FN(c, H) TARGET_VNNI static void vnni_##c##H(const kargs *p) { kern_zmm(p, c, H, ZMM_VNNI); }
#define AVX512_FN(c, H, S) \
    TARGET_AVX512 static void avx512_##c##H##S(const kargs *p) { kern_zmm(p, c, H, S ? ZMM_SIGNED : ZMM_MADD); }
#define AVX2_FN(c, H, S) TARGET_AVX2 static void avx2_##c##H##S(const kargs *p) { kern_avx2(p, AVX2_R, c, H, S); }
VNNI_FN(1, 1) VNNI_FN(2, 1) VNNI_FN(3, 1) VNNI_FN(1, 2) VNNI_FN(2, 2) VNNI_FN(3, 2)
AVX512_FN(1, 1, 0) AVX512_FN(2, 1, 0) AVX512_FN(3, 1, 0) AVX512_FN(1, 2, 0) AVX512_FN(2, 2, 0) AVX512_FN(3, 2, 0)
AVX512_FN(1, 1, 1) AVX512_FN(2, 1, 1) AVX512_FN(3, 1, 1)
AVX2_FN(1, 1, 0) AVX2_FN(2, 1, 0) AVX2_FN(1, 2, 0) AVX2_FN(2, 2, 0) AVX2_FN(1, 1, 1) AVX2_FN(2, 1, 1)

typedef void kernel_fn(const kargs *);

/* fn[c - 1] for c activation rows at a time, and R, C of the path */
typedef struct {
    kernel_fn *fn[MAXC];
    int R, C;
} path;

static path pick_path(cpu_level_t level, int halves, int is_signed) {
    const int two = halves == 2;
    if (level == LEVEL_VNNI)
        return two ? (path){{vnni_12, vnni_22, vnni_32}, 4, 3} : (path){{vnni_11, vnni_21, vnni_31}, 4, 3};
    if (level == LEVEL_AVX512) {
        if (is_signed) return (path){{avx512_111, avx512_211, avx512_311}, 4, 3};
        return two ? (path){{avx512_120, avx512_220, avx512_320}, 4, 3}
                   : (path){{avx512_110, avx512_210, avx512_310}, 4, 3};
    }
    if (is_signed) return (path){{avx2_111, avx2_211}, AVX2_R, AVX2_C};
    return two ? (path){{avx2_120, avx2_220}, AVX2_R, AVX2_C} : (path){{avx2_110, avx2_210}, AVX2_R, AVX2_C};
}

static int matmul_tiled(int type, const uint8_t *w, int64_t row_bytes, int64_t n, int64_t k, const uint8_t *xq,
                        int64_t t, float *y, int64_t ldy, cpu_level_t level) {
    const tile_shape s = make_shape(type, k, level);
    const path pa = pick_path(level, s.halves, type == GGML_Q8_0 && level != LEVEL_VNNI);
    int tile_rows = (int)(TILE_BYTES / s.row_bytes);
    tile_rows = (tile_rows > TILE_ROWS ? TILE_ROWS : tile_rows) / pa.R * pa.R;
    if (tile_rows < pa.R) tile_rows = pa.R;
    const int64_t ntiles = (n + tile_rows - 1) / tile_rows, xrow = q8_row_bytes(k), tile_bytes = tile_rows * s.row_bytes;
    const int threads = cpu_threads();
    uint8_t *tiles = aligned_alloc(64, threads * tile_bytes); /* one tile per thread */
    if (!tiles) return KERR_MEMORY;
#pragma omp parallel num_threads(threads)
    {
        uint8_t *tile = tiles + omp_get_thread_num() * tile_bytes;
#pragma omp for schedule(dynamic, 1)
        for (int64_t tix = 0; tix < ntiles; tix++) {
            const int64_t j0 = tix * tile_rows;
            const int rows = (int)(n - j0 < tile_rows ? n - j0 : tile_rows);
            const int padded = (rows + pa.R - 1) / pa.R * pa.R;
            pack_tile(&s, w + j0 * row_bytes, row_bytes, rows, padded, tile);
            for (int64_t i0 = 0; i0 < t; i0 += pa.C) { /* C activation rows in L1 while the tile passes */
                const int c = (int)(t - i0 < pa.C ? t - i0 : pa.C);
                for (int r0 = 0; r0 < padded; r0 += pa.R) {
                    const kargs a = {tile + r0 * s.row_bytes, s.row_bytes, s.group_bytes, xq + i0 * xrow, xrow,
                                     s.groups, y + i0 * ldy + j0 + r0, ldy, rows - r0};
                    pa.fn[c - 1](&a);
                }
            }
        }
    }
    free(tiles);
    return 0;
}
#endif

int cpu_matmul_q8(int type, const uint8_t *w, int64_t row_bytes, int64_t n, int64_t k, const uint8_t *xq, int64_t t,
                  float *y, int64_t ldy) {
    if (!supported(type)) return KERR_TYPE;
    if (k <= 0 || k % ggml_block_elems(type) || n < 0 || t < 0 || ldy < n) return KERR_SHAPE;
    if (row_bytes < k / ggml_block_elems(type) * ggml_block_bytes(type)) return KERR_SHAPE;
    if (n == 0 || t == 0) return 0;
    const cpu_level_t level = cpu_level();
#if CPU_X86
    if (level >= LEVEL_AVX2) return matmul_tiled(type, w, row_bytes, n, k, xq, t, y, ldy, level);
#endif
    matmul_scalar(type, w, row_bytes, n, k, xq, t, y, ldy);
    return 0;
}
