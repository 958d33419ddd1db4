/* matvec_q8: y[i, j] (row stride ldy) = sum_k W[j, k] x^[i, k] for i < t, j < n: the decode path (few
 * rows, each row's logits read), with integer dot products straight from W's GGUF blocks.
 *
 * x [t, k] float32 is quantized here, per block of 32 values, by the rule of cpu/q8_block.h (the one
 * matmul_q8 uses: d = max|x| / 127, q = round_half_even(x / d)), into a plain row layout: q int8 in
 * element order, then per block d, d * sum q and d * sum q of each half (see xrow_bytes).
 * W: n rows of row_bytes bytes in GGUF blocks, read from the mapped file as cpu_matvec reads them. Every
 * supported type is brought, per 32 weights ("unit", the activations' block b), to unsigned codes u (one
 * ymm of bytes) and floats with w = dw * u + mw (Q6_K: dw per 16, mw = -32 dw):
 *   Q4_0 u = nibble, mw = -8 d      Q4_1 u = nibble, dw = d, mw = m      Q8_0 u = q ^ 0x80, mw = -128 d
 *   Q5_0 u = nibble | 16 h, -16 d   Q5_1 u = nibble | 16 h, m            Q4_K / Q5_K dw = d sc, mw = -dmin mn
 *   Q6_K u = low 4 | high 2 << 4, dw = d sc per 16, mw = -32 dw
 * so that, with xd = d, xs = d sum q of the activation block,
 *   y = sum over units of dw * xd * (sum u * q)  +  mw * xs        (Q6_K: per half, with its xs half)
 * The integer dot is one vpdpbusd per unit and activation row (AVX-512 VNNI on ymm: u8 x s8, 4 products
 * per int32 lane). Legacy types: its 8 lanes are converted and FMA'd, scaled by dw * xd, into one float
 * accumulator per activation row, the mw * xs terms into a scalar beside it. K-quants: the 8 units of a
 * super-block are reduced to one ymm of per-unit totals (vphaddd tree; Q6_K to per-half totals), then
 * one convert and FMA by the per-unit (dw * xd) vector and one FMA of mw * xs: 0.6-0.9x the time of the
 * per-unit scheme on Q4_K / Q6_K. The unpacked codes are shared by up to 8 activation rows (t > 8 reads
 * the row again, from cache). Against the float32 kernel
 * (cpu/matvec.c, which converts every weight to float and needs ~3x the instructions per weight at
 * t = 1), this is the arithmetic llama.cpp decodes with: on the memory-bound decode step the weights
 * stream at the rate of the memory, not of the instructions.
 *
 * Exactness: integer dots are exact; each row's float sums run in one fixed order whatever t and
 * whatever rows it is batched with (batch invariance). Against float math on the dequantized weights
 * and the quantized activations x^ = d q: |y - y_ref| <= ~(k / 32 + 8) 2^-23 sum |w| |x^|; against the
 * float32 activations, add the quantization error, <= sum_j |w_j| max|x_b(j)| / 254 (cpu/matmul_q8.c
 * gives its measured size: ~1e-3 of sum |w||x| at k = 896).
 *
 * Levels: AVX-512 VNNI only (cpu_matvec_q8_supported is 0 on other levels and for F32, F16, BF16, Q2_K,
 * Q3_K, which keep the float32 kernel): the backend asks once and takes cpu_matvec there.
 * Threads: as cpu_matvec_parts, the team quantizes x (a share of rows each), then shares the weight rows
 * of all parts in static chunks; calls under 32 KiB of weights stay single-threaded.
 */
#include "blocks.h"
#include "q8_block.h"

#include <omp.h>
#include <stdlib.h>

#define TT_Q8 8          /* activation rows sharing one pass over a weight row */

/* A quantized activation row, for kp = k rounded up to a group of 256 values (nbp = kp / 32 blocks), the
 * padding zero: q [kp] int8, then four float arrays over the blocks: d [nbp], s = d sum q [nbp], and the
 * half-block sums s0, s1 = d sum q[0..15], d sum q[16..31] [nbp] (Q6_K's scales are per 16). */
#define GROUP 256 /* values per group: 8 units of 32, one ymm of per-unit sums */
static int64_t padded_k(int64_t k) { return (k + GROUP - 1) / GROUP * GROUP; }
static int64_t xrow_bytes(int64_t k) { return padded_k(k) + 16 * (padded_k(k) / 32); }
enum { X_D, X_S, X_S0, X_S1 }; /* the float arrays of a row, in this order */

static inline const float *xfloats(const uint8_t *xr, int64_t k, int which) {
    return (const float *)(xr + padded_k(k)) + which * (padded_k(k) / 32);
}

/* the integer types matmul_q8 takes (the same w = dw * u + mw forms), on the VNNI level only */
int cpu_matvec_q8_supported(int type) { return cpu_level() == LEVEL_VNNI && cpu_matmul_q8_supported(type); }

#if CPU_X86

/* noipa: without it gcc 12 -O2 drops the calls of this function from cpu_matvec_q8_parts (seen in its
 * assembly: the OpenMP body never quantizes; a direct call from main was dropped the same way) */
TARGET_VNNI __attribute__((noipa)) static void quantize_xrow(const float *x, int64_t k, uint8_t *out) {
    const int64_t kp = padded_k(k), nbp = kp / 32;
    float *f = (float *)(out + kp);
    memset(out, 0, (size_t)xrow_bytes(k));
    for (int64_t b = 0; b < k / 32; b++) {
        qblock qb;
        quantize_block_avx512(x + 32 * b, &qb);
        memcpy(out + 32 * b, qb.q, 32);
        f[X_D * nbp + b] = qb.d;
        f[X_S * nbp + b] = qb.d * (float)(qb.sum[0] + qb.sum[1]);
        f[X_S0 * nbp + b] = qb.d * (float)qb.sum[0];
        f[X_S1 * nbp + b] = qb.d * (float)qb.sum[1];
    }
}

/* the block sizes as constants the compiler folds (ggml_block_elems / ggml_block_bytes are calls) */
INLINE int block_elems_of(int type) { return type >= GGML_Q2_K ? QK_K : QK; }
INLINE int block_bytes_of(int type) {
    switch (type) {
    case GGML_Q4_0: return sizeof(block_q4_0);
    case GGML_Q4_1: return sizeof(block_q4_1);
    case GGML_Q5_0: return sizeof(block_q5_0);
    case GGML_Q5_1: return sizeof(block_q5_1);
    case GGML_Q8_0: return sizeof(block_q8_0);
    case GGML_Q4_K: return sizeof(block_q4_K);
    case GGML_Q5_K: return sizeof(block_q5_K);
    default: return sizeof(block_q6_K);
    }
}

/* One K-quant super-block of a weight row: the codes of its 8 units and their floats:
 * dw[0], mw[0] per unit; Q6_K per half unit, dw[0] = [units 0..3, half 0 | units 0..3, half 1],
 * dw[1] the same for units 4..7, mw = -32 dw. Built once per group, shared by every activation row. */
typedef struct {
    __m256i u[8];
    __m256 dw[2], mw[2];
} wgroup;

TARGET_VNNI INLINE __m256i nib_hi(__m256i nib, uint32_t qh) {
    return _mm256_mask_add_epi8(nib, (__mmask32)qh, nib, _mm256_set1_epi8(16)); /* | 16 where the bit is set */
}

/* Legacy types (Q4_0 ... Q8_0), one block (unit) at a time: its codes and floats, then per activation row
 * one vpdpbusd, its 8 lanes converted and FMA'd scaled by dw * xd, and mw * xs in a scalar. (Grouping 8
 * blocks into one reduction, as the K-quants do, measured 1.05-1.2x slower for these types: gathering the
 * 8 scattered float16 scales costs more than the per-unit scaling saves.) */
typedef struct {
    __m256i u;
    float dw, mw;
} wunit;

TARGET_VNNI INLINE wunit legacy_unit(int type, const uint8_t *b) {
    wunit r;
    const float d = half_hw(*(const ggml_half *)b);
    r.dw = d;
    switch (type) {
    case GGML_Q4_0: r.u = nibbles32(((const block_q4_0 *)b)->qs), r.mw = -8.0f * d; break;
    case GGML_Q4_1: r.u = nibbles32(((const block_q4_1 *)b)->qs), r.mw = half_hw(((const ggml_half *)b)[1]); break;
    case GGML_Q5_0:
        r.u = nib_hi(nibbles32(((const block_q5_0 *)b)->qs), load_u32(((const block_q5_0 *)b)->qh)), r.mw = -16.0f * d;
        break;
    case GGML_Q5_1:
        r.u = nib_hi(nibbles32(((const block_q5_1 *)b)->qs), load_u32(((const block_q5_1 *)b)->qh));
        r.mw = half_hw(((const ggml_half *)b)[1]);
        break;
    default: /* Q8_0 */
        r.u = _mm256_xor_si256(load256(((const block_q8_0 *)b)->qs), bytes((char)0x80)), r.mw = -128.0f * d;
    }
    return r;
}

/* block b of activation row xr: acc += dot * dw * xd (8 lanes), *off += mw * xs */
TARGET_VNNI INLINE void dot_unit(const wunit *w, const uint8_t *xr, int64_t k, int64_t b, __m256 *acc, float *off) {
    const __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w->u, _mm256_loadu_si256((const __m256i *)(xr + 32 * b)));
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(w->dw * xfloats(xr, k, X_D)[b]), *acc);
    *off += w->mw * xfloats(xr, k, X_S)[b];
}

/* K-quants, a super-block (8 units of 32) at a time: */
/* the 8 units of a K-quant super-block */
TARGET_VNNI INLINE void group_k(int type, const uint8_t *p, wgroup *g) {
    if (type == GGML_Q6_K) {
        const block_q6_K *b = (const block_q6_K *)p;
        for (int c = 0; c < 8; c++) { /* element 32 c + l = 128 a + r: ql[64 a + 32 (c' & 1) + l] >> 4 (c' / 2) */
            const int a = c / 4, cc = c % 4;
            const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(load256(b->ql + 64 * a + 32 * (cc & 1)), 4 * (cc / 2)), bytes(15));
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(load256(b->qh + 32 * a), 2 * cc), bytes(3));
            g->u[c] = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
        }
        /* scales[2 u + h] -> [u0..u3 h0 | u0..u3 h1], [u4..u7 h0 | u4..u7 h1] */
        const __m512 sc = _mm512_mul_ps(i8x16f(b->scales), _mm512_set1_ps(half_hw(b->d)));
        const __m512 perm = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15), sc);
        g->dw[0] = _mm512_castps512_ps256(perm), g->dw[1] = _mm512_extractf32x8_ps(perm, 1);
        g->mw[0] = _mm256_mul_ps(g->dw[0], _mm256_set1_ps(-32.0f)), g->mw[1] = _mm256_mul_ps(g->dw[1], _mm256_set1_ps(-32.0f));
        return;
    }
    const block_q4_K *b4 = (const block_q4_K *)p; /* Q5_K shares d, dmin, scales at the same offsets */
    const uint8_t *qs = type == GGML_Q4_K ? b4->qs : ((const block_q5_K *)p)->qs;
    const __m256i qh = type == GGML_Q5_K ? load256(((const block_q5_K *)p)->qh) : _mm256_setzero_si256();
    for (int c = 0; c < 8; c++) {
        g->u[c] = _mm256_and_si256(_mm256_srli_epi16(load256(qs + 32 * (c / 2)), 4 * (c & 1)), bytes(15));
        if (type == GGML_Q5_K) g->u[c] = nib_hi(g->u[c], _mm256_test_epi8_mask(qh, bytes(1 << c)));
    }
    uint8_t sm[16]; /* sc[c], then mn[c] */
    k4_unpack(b4->scales, sm);
    const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)load_u32((const uint8_t *)&b4->d)));
    const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)sm)));
    const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(sm + 8))));
    g->dw[0] = _mm256_mul_ps(sc, _mm256_broadcastss_ps(dm));
    g->mw[0] = _mm256_mul_ps(mn, _mm256_sub_ps(_mm256_setzero_ps(), _mm256_broadcastss_ps(_mm_movehdup_ps(dm))));
}

/* 8 vectors of 8 int32 partial sums -> their 8 totals, lane u = sum of d[u] (vphaddd tree) */
TARGET_VNNI INLINE __m256i totals8(const __m256i *d) {
    const __m256i t0 = _mm256_hadd_epi32(_mm256_hadd_epi32(d[0], d[1]), _mm256_hadd_epi32(d[2], d[3]));
    const __m256i t1 = _mm256_hadd_epi32(_mm256_hadd_epi32(d[4], d[5]), _mm256_hadd_epi32(d[6], d[7]));
    /* t0 = [d0 d1 d2 d3 over lanes 0..3 | the same over lanes 4..7], t1 likewise for d4 .. d7 */
    return _mm256_add_epi32(_mm256_permute2x128_si256(t0, t1, 0x20), _mm256_permute2x128_si256(t0, t1, 0x31));
}

/* 4 vectors -> [d0 d1 d2 d3 over lanes 0..3 | over lanes 4..7]: Q6_K's half-unit sums */
TARGET_VNNI INLINE __m256i halves4(const __m256i *d) {
    return _mm256_hadd_epi32(_mm256_hadd_epi32(d[0], d[1]), _mm256_hadd_epi32(d[2], d[3]));
}

/* group g of activation row xr: acc += per-unit dot * dw * xd + mw * xs (one accumulator: fewer registers) */
TARGET_VNNI INLINE void dot_group(int type, const wgroup *w, const uint8_t *xr, int64_t k, int64_t g, __m256 *acc) {
    __m256i d[8];
    for (int u = 0; u < 8; u++)
        d[u] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w->u[u], _mm256_loadu_si256((const __m256i *)(xr + GROUP * g + 32 * u)));
    const float *xd = xfloats(xr, k, X_D) + 8 * g;
    if (type == GGML_Q6_K) {
        const float *s0 = xfloats(xr, k, X_S0) + 8 * g, *s1 = xfloats(xr, k, X_S1) + 8 * g;
        for (int h = 0; h < 2; h++) {
            const __m256 xd4 = _mm256_broadcast_ps((const __m128 *)(xd + 4 * h)); /* units' d, for both halves */
            const __m256 xs = _mm256_set_m128(_mm_loadu_ps(s1 + 4 * h), _mm_loadu_ps(s0 + 4 * h));
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(halves4(d + 4 * h)), _mm256_mul_ps(w->dw[h], xd4), *acc);
            *acc = _mm256_fmadd_ps(w->mw[h], xs, *acc);
        }
        return;
    }
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(totals8(d)), _mm256_mul_ps(w->dw[0], _mm256_loadu_ps(xd)), *acc);
    *acc = _mm256_fmadd_ps(w->mw[0], _mm256_loadu_ps(xfloats(xr, k, X_S) + 8 * g), *acc);
}

TARGET_VNNI INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* out[i] = W row . x^[i] for i < tt; xq: tt quantized activation rows of xrb bytes */
TARGET_VNNI INLINE void tile_q8(int type, const uint8_t *row, int64_t k, const uint8_t *xq, int64_t xrb, int tt,
                                float *out) {
    const int be = block_elems_of(type), bb = block_bytes_of(type);
    __m256 acc[TT_Q8];
    float off[TT_Q8];
    for (int i = 0; i < tt; i++) acc[i] = _mm256_setzero_ps(), off[i] = 0.0f;
    for (int64_t b = 0; b < k / be; b++) {
        const uint8_t *p = row + b * bb;
        for (int o = 0; o < bb; o += 64) _mm_prefetch((const char *)p + PREFETCH + o, _MM_HINT_T0);
        if (be == QK) {
            const wunit w = legacy_unit(type, p);
            for (int i = 0; i < tt; i++) dot_unit(&w, xq + i * xrb, k, b, &acc[i], &off[i]);
        } else {
            wgroup w;
            group_k(type, p, &w);
            for (int i = 0; i < tt; i++) dot_group(type, &w, xq + i * xrb, k, b, &acc[i]);
        }
    }
    for (int i = 0; i < tt; i++) out[i] = hsum256(acc[i]) + off[i];
}

/* tile_q8 with the type and tt compile-time constants (acc and off stay in registers) */
#define TILE_Q8_TT(TYPE, TT) tile_q8(TYPE, row, a->k, xq, xrb, TT, out)
#define TILE_Q8_Q4_0(TT) TILE_Q8_TT(GGML_Q4_0, TT)
#define TILE_Q8_Q4_1(TT) TILE_Q8_TT(GGML_Q4_1, TT)
#define TILE_Q8_Q5_0(TT) TILE_Q8_TT(GGML_Q5_0, TT)
#define TILE_Q8_Q5_1(TT) TILE_Q8_TT(GGML_Q5_1, TT)
#define TILE_Q8_Q8_0(TT) TILE_Q8_TT(GGML_Q8_0, TT)
#define TILE_Q8_Q4_K(TT) TILE_Q8_TT(GGML_Q4_K, TT)
#define TILE_Q8_Q5_K(TT) TILE_Q8_TT(GGML_Q5_K, TT)
#define TILE_Q8_Q6_K(TT) TILE_Q8_TT(GGML_Q6_K, TT)
#define TILE_Q8(TYPE) \
    case GGML_##TYPE: SWITCH_TT8_OF(tt, TILE_Q8_##TYPE); break

typedef struct {
    int type;
    const uint8_t *w;
    int64_t row_bytes, n, k, t;
    const uint8_t *xq; /* t quantized rows */
    float *y;
    int64_t ldy;
} q8_args;

TARGET_VNNI static void row_q8(const q8_args *a, int64_t j) {
    const uint8_t *row = a->w + j * a->row_bytes;
    const int64_t xrb = xrow_bytes(a->k);
    for (int64_t i0 = 0; i0 < a->t; i0 += TT_Q8) {
        const int tt = a->t - i0 < TT_Q8 ? (int)(a->t - i0) : TT_Q8;
        const uint8_t *xq = a->xq + i0 * xrb;
        float out[TT_Q8] = {0};
        switch (a->type) {
            TILE_Q8(Q4_0); TILE_Q8(Q4_1); TILE_Q8(Q5_0); TILE_Q8(Q5_1); TILE_Q8(Q8_0);
            TILE_Q8(Q4_K); TILE_Q8(Q5_K); TILE_Q8(Q6_K);
        }
        for (int i = 0; i < tt; i++) a->y[(i0 + i) * a->ldy + j] = out[i];
    }
}

#endif /* CPU_X86 */

int cpu_matvec_q8_parts(int nparts, const int *types, const uint8_t *const *ws, const int64_t *row_bytes,
                        const int64_t *ns, int64_t k, const float *x, int64_t t, float *y, int64_t ldy) {
    if (nparts < 1 || nparts > MATVEC_MAX_PARTS) return KERR_SHAPE;
    int64_t total_bytes = 0, total_n = 0;
    for (int p = 0; p < nparts; p++) {
        if (!cpu_matvec_q8_supported(types[p])) return KERR_TYPE;
        const int rc = check_rows(types[p], k, row_bytes[p]);
        if (rc) return rc;
        total_bytes += ns[p] * row_bytes[p], total_n += ns[p];
    }
    if (total_n <= 0 || t <= 0) return 0;
#if CPU_X86
    const int64_t xrb = xrow_bytes(k);
    uint8_t *xq = aligned_alloc(64, (size_t)(t * xrb));
    if (!xq) return -3;
    q8_args a[MATVEC_MAX_PARTS];
    int64_t first[MATVEC_MAX_PARTS + 1] = {0}; /* first[p]: the first row step of part p */
    for (int64_t p = 0, off = 0; p < nparts; off += ns[p], p++) {
        a[p] = (q8_args){types[p], ws[p], row_bytes[p], ns[p], k, t, xq, y + off, ldy};
        first[p + 1] = first[p] + ns[p];
    }
#pragma omp parallel num_threads(cpu_threads()) if (total_bytes >= 32768 || total_n * k * t >= 262144)
    {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < t; i++) quantize_xrow(x + i * k, k, xq + i * xrb);
#pragma omp for schedule(static)
        for (int64_t s = 0; s < first[nparts]; s++) {
            int p = 0;
            while (s >= first[p + 1]) p++;
            row_q8(&a[p], s - first[p]);
        }
    }
    free(xq);
    return 0;
#else
    return KERR_TYPE;
#endif
}
