/* matvec: y[i, j] = sum_k W[j, k] * x[i, k] for i < t, j < n; output row i starts at y + i * ldy (ldy >= n,
 * so the q | k | v parts of a fused projection write column slices of one output).
 *
 * W: n rows of row_bytes = k / block * block_bytes bytes in the GGUF format of `type` (the 13 types of
 * cpu/blocks.h, whose header gives every block layout), read straight from the mapped file.
 * x: [t, k] float32, t = 1 ... ~16 (decode batches; any t works). y: float32, rows strided by ldy.
 *
 * Fused dequantize x vector: every weight byte is read once per call, whatever t. AVX-512: for two weight
 * rows at a time, each block's scales are read once (prep_512), then its weights are decoded 32 at a time
 * into registers (dec_512: for the 4- and 5-bit types a lookup in a 16-float table d * i + m built once
 * per block, so the scale costs one FMA per block, not one per weight) and FMA'd against up to 8
 * activation rows before the next 32; t > 8 decodes the row again from L1/L2, never from memory. AVX2:
 * a row is decoded once into int8 codes + per-16 scales in a per-thread buffer (L1), then converted 8 at a
 * time against up to 4 activation rows. F32 / F16 / BF16 rows are converted in registers. The sums run in
 * float32: activations are not quantized (so no int8 / VNNI dot products).
 * For t > 1, x is first copied into 16-groups [ceil(k / 16)][t][16] (xg16): the t activation rows become
 * one sequential stream (t = 8, k = 4864: 14 -> 9-10 ms for 8192 Q4_1 rows on one thread).
 * Weight rows are software-prefetched PREFETCH bytes ahead (streamed Q4_1 / Q4_K / Q8_0 rows ran
 * 1.4-1.7x slower with the hardware prefetcher alone).
 *
 * Threads: the OpenMP team (cpu_threads()) shares the output columns j in static contiguous chunks (pairs
 * of rows on AVX-512, which share every activation load), so each thread streams its own part of W and
 * writes disjoint y columns; calls under 32 KiB of weights and 256 Ki multiply-adds stay single-threaded.
 *
 * Paths (cpu_level()), every type on every path:
 *   scalar  deq_row_scalar (the definition, blocks.h section 1) into a float row, then plain dot products.
 *   AVX2    (+ FMA, F16C) codes (blocks.h section 2), vpmovsxbd + vcvtdq2ps + vfmadd231ps, 8 lanes,
 *           one weight row x 4 activation rows per pass.
 *   AVX-512 (F/BW/VL/DQ) blocks.h section 3, vpermps / vpermt2ps tables, 16 lanes, two weight rows x 8
 *           activation rows per pass, masked float tails. The VNNI level takes this path.
 * Tolerance: float32 accumulation in another order than NumPy's, w = s * q + m with one rounding:
 *   |y - y_ref| <= 1e-5 * sum_k |W[j, k] x[i, k]| (tests/kernels/test_cpu_quant.py).
 * Returns KERR_TYPE, KERR_SHAPE (k not a multiple of the block, or row_bytes not k's), or -3 when the
 * per-thread buffers cannot be allocated.
 */
#include "blocks.h"

#include <omp.h>
#include <stdlib.h>

typedef struct {
    int type;
    const uint8_t *w; /* [n, row_bytes] */
    int64_t row_bytes, n, k;
    const float *x;  /* [t, k] */
    const float *xg; /* x in 16-groups: [ceil(k / 16)][t][16], x itself when t == 1 (see xg16) */
    int64_t t;
    float *y; /* [t, ldy] */
    int64_t ldy;
} matvec_args;

/* a row's codes in a thread's buffer: q [k] int8 (padded to 64 bytes), then sm [k / 8] float */
static int64_t codes_bytes(int64_t k) { return (k + 63) / 64 * 64 + 4 * (k / 8); }

/* The SIMD tiles read x in 16-groups, [ceil(k / 16)][t][16] (zero-padded): the 16 floats of every
 * activation row at element e lie together. xg16(xg, t, e, i) = &x[i][e] in that layout; for t == 1 the
 * layout is x itself. */
static inline const float *xg16(const float *xg, int64_t t, int64_t e, int64_t i) {
    return xg + ((e / 16) * t + i) * 16 + e % 16;
}

/* group g of xg [ceil(k / 16)][t][16] from x [t, k] */
static void group_x(const float *x, int64_t t, int64_t k, int64_t g, float *xg) {
    const int64_t n = k - 16 * g < 16 ? k - 16 * g : 16;
    for (int64_t i = 0; i < t; i++) {
        float *o = xg + (g * t + i) * 16;
        memcpy(o, x + i * k + 16 * g, 4 * n);
        memset(o + n, 0, 4 * (16 - n));
    }
}

/* ---- scalar -------------------------------------------------------------------------------------- */

static float dot(const float *a, const float *b, int64_t k) {
    float s = 0.0f;
    for (int64_t i = 0; i < k; i++) s += a[i] * b[i];
    return s;
}

static void row_scalar(const matvec_args *a, int64_t j, uint8_t *buf) {
    float *wf = (float *)buf; /* [k] */
    deq_row_scalar(a->type, a->w + j * a->row_bytes, a->k, wf);
    for (int64_t i = 0; i < a->t; i++) a->y[i * a->ldy + j] = dot(wf, a->x + i * a->k, a->k);
}

#if CPU_X86


/* ---- AVX2: one weight row x up to 4 activation rows ---------------------------------------------- */

#define TT_AVX2 4

TARGET_AVX2 INLINE float hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* 8 codes at q -> s * q + m */
TARGET_AVX2 INLINE __m256 codes8_avx2(const int8_t *q, __m256 s, __m256 m) {
    const __m256i q32 = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(q32), s, m);
}

/* out[i] = codes row . x[i] for i < tt; groups = k / 16 */
TARGET_AVX2 INLINE void qtile_avx2(const int8_t *q, const float *sm, int64_t groups, const float *x, int64_t t,
                                   int tt, float *out) {
    __m256 lo[TT_AVX2], hi[TT_AVX2];
    for (int i = 0; i < tt; i++) lo[i] = hi[i] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const __m256 s = _mm256_broadcast_ss(sm + 2 * g), m = _mm256_broadcast_ss(sm + 2 * g + 1);
        const __m256 w0 = codes8_avx2(q + 16 * g, s, m), w1 = codes8_avx2(q + 16 * g + 8, s, m);
        for (int i = 0; i < tt; i++) {
            lo[i] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xg16(x, t, 16 * g, i)), lo[i]);
            hi[i] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xg16(x, t, 16 * g + 8, i)), hi[i]);
        }
    }
    for (int i = 0; i < tt; i++) out[i] = hsum_avx2(_mm256_add_ps(lo[i], hi[i]));
}

/* 8 weights of a float row at element e */
TARGET_AVX2 INLINE __m256 fload8_avx2(int type, const uint8_t *row, int64_t e) {
    const __m128i *h = (const __m128i *)((const uint16_t *)row + e);
    if (type == GGML_F32) return _mm256_loadu_ps((const float *)row + e);
    if (type == GGML_F16) return _mm256_cvtph_ps(_mm_loadu_si128(h));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(h)), 16));
}

static inline float fload1(int type, const uint8_t *row, int64_t e) {
    if (type == GGML_F32) return ((const float *)row)[e];
    const uint16_t h = ((const uint16_t *)row)[e];
    return type == GGML_F16 ? fp16_to_fp32(h) : bf16_to_fp32(h);
}

TARGET_AVX2 INLINE void ftile_avx2(int type, const uint8_t *row, int64_t k, const float *x, int64_t t, int tt,
                                   float *out) {
    __m256 acc[TT_AVX2];
    for (int i = 0; i < tt; i++) acc[i] = _mm256_setzero_ps();
    int64_t e = 0;
    for (; e + 8 <= k; e += 8) {
        const __m256 w = fload8_avx2(type, row, e);
        for (int i = 0; i < tt; i++) acc[i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xg16(x, t, e, i)), acc[i]);
    }
    for (int i = 0; i < tt; i++) out[i] = hsum_avx2(acc[i]);
    for (; e < k; e++)
        for (int i = 0; i < tt; i++) out[i] += fload1(type, row, e) * *xg16(x, t, e, i);
}

#define QTILE_AVX2(TT) qtile_avx2(q, sm, a->k / 16, x, a->t, TT, out)
#define FTILE_AVX2(TYPE, TT) ftile_avx2(TYPE, row, a->k, x, a->t, TT, out)
#define FTILE_AVX2_F32(TT) FTILE_AVX2(GGML_F32, TT)
#define FTILE_AVX2_F16(TT) FTILE_AVX2(GGML_F16, TT)
#define FTILE_AVX2_BF16(TT) FTILE_AVX2(GGML_BF16, TT)

/* y[:, j] for one weight row j */
TARGET_AVX2 static void row_avx2(const matvec_args *a, int64_t j, uint8_t *buf) {
    const uint8_t *row = a->w + j * a->row_bytes;
    int8_t *q = (int8_t *)buf;
    float *sm = (float *)(buf + (a->k + 63) / 64 * 64);
    if (!is_float_type(a->type)) codes_blocks(a->type, row, a->k / ggml_block_elems(a->type), q, sm);
    for (int64_t i0 = 0; i0 < a->t; i0 += TT_AVX2) {
        const int tt = a->t - i0 < TT_AVX2 ? (int)(a->t - i0) : TT_AVX2;
        const float *x = a->xg + 16 * i0; /* activation rows i0 ... in the 16-group layout */
        float out[TT_AVX2];
        switch (a->type) {
        case GGML_F32: SWITCH_TT4_OF(tt, FTILE_AVX2_F32); break;
        case GGML_F16: SWITCH_TT4_OF(tt, FTILE_AVX2_F16); break;
        case GGML_BF16: SWITCH_TT4_OF(tt, FTILE_AVX2_BF16); break;
        default: SWITCH_TT4_OF(tt, QTILE_AVX2);
        }
        for (int i = 0; i < tt; i++) a->y[(i0 + i) * a->ldy + j] = out[i];
    }
}

/* ---- AVX-512: two weight rows x up to 8 activation rows ------------------------------------------ */

#define TT_512 8

/* out[i] = W row 0 . x[i], out[TT_512 + i] = W row 1 . x[i] for i < tt. Per block of both rows: its scales
 * once (prep_512), then 32 weights at a time in registers (dec_512), FMA'd against the tt activation rows.
 * One accumulator per (weight row, activation row), whatever tt: a row's sum runs in the same order at
 * every batch size, so its result never depends on what it is batched with (a second accumulator set for
 * tt <= 2, tried for FMA latency, changed the order and measured no faster: decode is memory-bound). */
TARGET_AVX512 INLINE void qtile_512(int type, const uint8_t *r0, const uint8_t *r1, int64_t k, const float *x,
                                    int64_t t, int tt, float *out) {
    const int be = ggml_block_elems(type), bb = ggml_block_bytes(type);
    __m512 acc[2][TT_512]; /* [weight row][activation row] */
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < tt; i++) acc[r][i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < k / be; b++) {
        const uint8_t *p0 = r0 + b * bb, *p1 = r1 + b * bb;
        for (int o = 0; o < bb; o += 64) {
            _mm_prefetch((const char *)p0 + PREFETCH + o, _MM_HINT_T0);
            _mm_prefetch((const char *)p1 + PREFETCH + o, _MM_HINT_T0);
        }
        bstate st0, st1;
        prep_512(type, p0, &st0);
        prep_512(type, p1, &st1);
#pragma GCC unroll 8 /* constant shifts; chunks 2c and 2c + 1 of a K-quant share their loads */
        for (int c = 0; c < be / 32; c++) {
            __m512 w0[2], w1[2];
            dec_512(type, p0, &st0, c, w0);
            dec_512(type, p1, &st1, c, w1);
            for (int i = 0; i < tt; i++)
                for (int h = 0; h < 2; h++) {
                    const __m512 xv = _mm512_loadu_ps(xg16(x, t, b * be + 32 * c + 16 * h, i));
                    acc[0][i] = _mm512_fmadd_ps(w0[h], xv, acc[0][i]);
                    acc[1][i] = _mm512_fmadd_ps(w1[h], xv, acc[1][i]);
                }
        }
    }
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < tt; i++) out[TT_512 * r + i] = _mm512_reduce_add_ps(acc[r][i]);
}

TARGET_AVX512 INLINE void ftile_512(int type, const uint8_t *r0, const uint8_t *r1, int64_t k, const float *x,
                                    int64_t t, int tt, float *out) {
    __m512 acc0[TT_512], acc1[TT_512];
    for (int i = 0; i < tt; i++) acc0[i] = acc1[i] = _mm512_setzero_ps();
    for (int64_t e = 0; e < k; e += 16) {
        const __mmask16 mask = first_lanes(k - e);
        const int size = type == GGML_F32 ? 4 : 2;
        _mm_prefetch((const char *)r0 + size * e + PREFETCH, _MM_HINT_T0);
        _mm_prefetch((const char *)r1 + size * e + PREFETCH, _MM_HINT_T0);
        const __m512 w0 = float16_512(type, r0, e, mask), w1 = float16_512(type, r1, e, mask);
        for (int i = 0; i < tt; i++) {
            const __m512 xv = _mm512_maskz_loadu_ps(mask, xg16(x, t, e, i));
            acc0[i] = _mm512_fmadd_ps(w0, xv, acc0[i]);
            acc1[i] = _mm512_fmadd_ps(w1, xv, acc1[i]);
        }
    }
    for (int i = 0; i < tt; i++) out[i] = _mm512_reduce_add_ps(acc0[i]), out[TT_512 + i] = _mm512_reduce_add_ps(acc1[i]);
}

#define QTILE_512(TYPE, TT) qtile_512(TYPE, r0, r1, a->k, x, a->t, TT, out)
#define QTILE_512_Q4_0(TT) QTILE_512(GGML_Q4_0, TT)
#define QTILE_512_Q4_1(TT) QTILE_512(GGML_Q4_1, TT)
#define QTILE_512_Q5_0(TT) QTILE_512(GGML_Q5_0, TT)
#define QTILE_512_Q5_1(TT) QTILE_512(GGML_Q5_1, TT)
#define QTILE_512_Q8_0(TT) QTILE_512(GGML_Q8_0, TT)
#define QTILE_512_Q2_K(TT) QTILE_512(GGML_Q2_K, TT)
#define QTILE_512_Q3_K(TT) QTILE_512(GGML_Q3_K, TT)
#define QTILE_512_Q4_K(TT) QTILE_512(GGML_Q4_K, TT)
#define QTILE_512_Q5_K(TT) QTILE_512(GGML_Q5_K, TT)
#define QTILE_512_Q6_K(TT) QTILE_512(GGML_Q6_K, TT)
#define FTILE_512(TYPE, TT) ftile_512(TYPE, r0, r1, a->k, x, a->t, TT, out)
#define FTILE_512_F32(TT) FTILE_512(GGML_F32, TT)
#define FTILE_512_F16(TT) FTILE_512(GGML_F16, TT)
#define FTILE_512_BF16(TT) FTILE_512(GGML_BF16, TT)

/* y[:, j] and y[:, j + 1] (when j + 1 < n; otherwise row j twice, the copy dropped) */
TARGET_AVX512 static void rows_512(const matvec_args *a, int64_t j) {
    const int two = j + 1 < a->n;
    const uint8_t *r0 = a->w + j * a->row_bytes, *r1 = two ? r0 + a->row_bytes : r0;
    for (int64_t i0 = 0; i0 < a->t; i0 += TT_512) {
        const int tt = a->t - i0 < TT_512 ? (int)(a->t - i0) : TT_512;
        const float *x = a->xg + 16 * i0; /* activation rows i0 ... in the 16-group layout */
        float out[2 * TT_512];
        switch (a->type) {
        case GGML_F32: SWITCH_TT8_OF(tt, FTILE_512_F32); break;
        case GGML_F16: SWITCH_TT8_OF(tt, FTILE_512_F16); break;
        case GGML_BF16: SWITCH_TT8_OF(tt, FTILE_512_BF16); break;
        case GGML_Q4_0: SWITCH_TT8_OF(tt, QTILE_512_Q4_0); break;
        case GGML_Q4_1: SWITCH_TT8_OF(tt, QTILE_512_Q4_1); break;
        case GGML_Q5_0: SWITCH_TT8_OF(tt, QTILE_512_Q5_0); break;
        case GGML_Q5_1: SWITCH_TT8_OF(tt, QTILE_512_Q5_1); break;
        case GGML_Q8_0: SWITCH_TT8_OF(tt, QTILE_512_Q8_0); break;
        case GGML_Q2_K: SWITCH_TT8_OF(tt, QTILE_512_Q2_K); break;
        case GGML_Q3_K: SWITCH_TT8_OF(tt, QTILE_512_Q3_K); break;
        case GGML_Q4_K: SWITCH_TT8_OF(tt, QTILE_512_Q4_K); break;
        case GGML_Q5_K: SWITCH_TT8_OF(tt, QTILE_512_Q5_K); break;
        case GGML_Q6_K: SWITCH_TT8_OF(tt, QTILE_512_Q6_K); break;
        }
        for (int i = 0; i < tt; i++) {
            a->y[(i0 + i) * a->ldy + j] = out[i];
            if (two) a->y[(i0 + i) * a->ldy + j + 1] = out[TT_512 + i];
        }
    }
}

#endif /* CPU_X86 */

/* ---- entry --------------------------------------------------------------------------------------- */

/* rows handled per step on this level: j = step * rows_per_step */
static int rows_per_step(cpu_level_t level) { return level >= LEVEL_AVX512 ? 2 : 1; }

static void matvec_step(cpu_level_t level, const matvec_args *a, int64_t j, uint8_t *buf) {
#if CPU_X86
    if (level >= LEVEL_AVX512) {
        rows_512(a, j);
        return;
    }
    if (level == LEVEL_AVX2) {
        row_avx2(a, j, buf);
        return;
    }
#endif
    row_scalar(a, j, buf);
}

/* The parts of one projection (q | k | v, gate | up: same x, columns side by side in y) in one team:
 * x is grouped once, and the team shares the row steps of all parts, so a small part (k, v) is split
 * too and there is one fork / join per projection. Part p writes columns off_p ... off_p + n_p - 1,
 * off_p = n_0 + ... + n_(p-1); each row's result is the one cpu_matvec gives it alone. */
int cpu_matvec_parts(int nparts, const int *types, const uint8_t *const *ws, const int64_t *row_bytes,
                     const int64_t *ns, int64_t k, const float *x, int64_t t, float *y, int64_t ldy) {
    if (nparts < 1 || nparts > MATVEC_MAX_PARTS) return KERR_SHAPE;
    int64_t total_bytes = 0, total_n = 0;
    for (int p = 0; p < nparts; p++) {
        const int rc = check_rows(types[p], k, row_bytes[p]);
        if (rc) return rc;
        total_bytes += ns[p] * row_bytes[p], total_n += ns[p];
    }
    if (total_n <= 0 || t <= 0) return 0;
    const int64_t groups = (k + 15) / 16;
    float *xg = t > 1 ? aligned_alloc(64, (size_t)(64 * t * (groups > 0 ? groups : 1))) : NULL;
    if (t > 1 && !xg) return -3;
    const cpu_level_t level = cpu_level();
    const int per = rows_per_step(level), threads = cpu_threads();
    matvec_args a[MATVEC_MAX_PARTS];
    int64_t first[MATVEC_MAX_PARTS + 1] = {0}; /* first[p]: the first global step of part p */
    for (int64_t p = 0, off = 0; p < nparts; off += ns[p], p++) {
        a[p] = (matvec_args){types[p], ws[p], row_bytes[p], ns[p], k, x, t > 1 ? xg : x, t, y + off, ldy};
        first[p + 1] = first[p] + (ns[p] + per - 1) / per;
    }
    /* per thread, AVX2: a row of codes; scalar: a float row; AVX-512 decodes in registers */
    const int64_t need = level == LEVEL_AVX2 ? codes_bytes(k) : level == LEVEL_SCALAR ? 4 * k : 0;
    const int64_t buf_bytes = (need + 63) / 64 * 64;
    uint8_t *bufs = aligned_alloc(64, (size_t)(threads * buf_bytes > 0 ? threads * buf_bytes : 64));
    if (!bufs) {
        free(xg);
        return -3;
    }
#pragma omp parallel num_threads(threads) if (total_bytes >= 32768 || total_n * k * t >= 262144)
    {
        uint8_t *buf = bufs + omp_get_thread_num() * buf_bytes;
        if (xg) { /* each thread groups a share of x; the barrier at the end of `omp for` publishes it */
#pragma omp for schedule(static)
            for (int64_t g = 0; g < groups; g++) group_x(x, t, k, g, xg);
        }
#pragma omp for schedule(static)
        for (int64_t s = 0; s < first[nparts]; s++) {
            int p = 0;
            while (s >= first[p + 1]) p++;
            matvec_step(level, &a[p], (s - first[p]) * per, buf);
        }
    }
    free(xg);
    free(bufs);
    return 0;
}

int cpu_matvec(int type, const uint8_t *w, int64_t row_bytes, int64_t n, int64_t k, const float *x,
               int64_t t, float *y, int64_t ldy) {
    return cpu_matvec_parts(1, &type, &w, &row_bytes, &n, k, x, t, y, ldy);
}
