/* matvec_q8: y[i, j] (row stride ldy) = sum_k W[j, k] x^[i, k] for i < t, j < n: the decode path (few
 * rows, each row's logits read), with integer dot products straight from W's GGUF blocks.
 *
 * x [t, k] float32 is quantized here, per block of 32 values, by the rule of cpu/q8_block.h (the one
 * matmul_q8 uses: d = max|x| / 127, q = round_half_even(x / d)), into a plain row layout: q [k] int8 in
 * element order, then per block {d, d * sum q, d * sum q[0..15], d * sum q[16..31]}.
 * W: n rows of row_bytes bytes in GGUF blocks, read from the mapped file as cpu_matvec reads them. Every
 * supported type is brought, per 32 weights ("unit", the activations' block b), to unsigned codes u (one
 * ymm of bytes) and floats with w = dw * u + mw (Q6_K: dw per 16, mw = -32 dw):
 *   Q4_0 u = nibble, mw = -8 d      Q4_1 u = nibble, dw = d, mw = m      Q8_0 u = q ^ 0x80, mw = -128 d
 *   Q5_0 u = nibble | 16 h, -16 d   Q5_1 u = nibble | 16 h, m            Q4_K / Q5_K dw = d sc, mw = -dmin mn
 *   Q6_K u = low 4 | high 2 << 4, dw = d sc per 16, mw = -32 dw
 * so that, with xd = d, xs = d sum q of the activation block,
 *   y = sum over units of dw * xd * (sum u * q)  +  mw * xs        (Q6_K: per half, with its xs half)
 * The integer dot is one vpdpbusd (AVX-512 VNNI on ymm: u8 x s8, 4 products per int32 lane); its 8 lanes
 * are converted and FMA'd, scaled by dw * xd, into one float accumulator per activation row; the mw * xs
 * terms go to a scalar beside it; both are summed once at the end. The unpacked codes of a unit are
 * shared by up to 8 activation rows (t > 8 reads the row again, from cache). Against the float32 kernel
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

typedef struct { float d, s, s0, s1; } xinfo; /* per activation block: d, d sum q, d sum of each half */

/* bytes of one quantized activation row: q [k], then xinfo [k / 32] */
static int64_t xrow_bytes(int64_t k) { return (k + 63) / 64 * 64 + ((int64_t)sizeof(xinfo) * (k / 32) + 63) / 64 * 64; }

static int supported_type(int type) {
    switch (type) {
    case GGML_Q4_0: case GGML_Q4_1: case GGML_Q5_0: case GGML_Q5_1: case GGML_Q8_0:
    case GGML_Q4_K: case GGML_Q5_K: case GGML_Q6_K: return 1;
    default: return 0;
    }
}

int cpu_matvec_q8_supported(int type) { return cpu_level() == LEVEL_VNNI && supported_type(type); }

#if CPU_X86

/* noipa: without it gcc 12 -O2 drops the calls of this function from cpu_matvec_q8_parts (seen in its
 * assembly: the OpenMP body never quantizes; a direct call from main was dropped the same way) */
TARGET_VNNI __attribute__((noipa)) static void quantize_xrow(const float *x, int64_t k, uint8_t *out) {
    xinfo *info = (xinfo *)(out + (k + 63) / 64 * 64);
    for (int64_t b = 0; b < k / 32; b++) {
        qblock qb;
        quantize_block_avx512(x + 32 * b, &qb);
        memcpy(out + 32 * b, qb.q, 32);
        info[b] = (xinfo){qb.d, qb.d * (float)(qb.sum[0] + qb.sum[1]), qb.d * (float)qb.sum[0],
                          qb.d * (float)qb.sum[1]};
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

/* one unit: its codes u, and dw, mw (Q6_K: dw per half in dw, dw2) */
typedef struct {
    __m256i u;
    float dw, dw2, mw;
} unit;

TARGET_VNNI INLINE __m256i nib_hi(__m256i nib, uint32_t qh) {
    return _mm256_mask_add_epi8(nib, (__mmask32)qh, nib, _mm256_set1_epi8(16)); /* | 16 where the bit is set */
}

/* unit c of the block at p (legacy types: c = 0); sm: the K-quant's unpacked 6-bit scales and mins */
TARGET_VNNI INLINE unit get_unit(int type, const uint8_t *p, int c, const uint8_t *sm, float d, float dmin) {
    unit r;
    r.dw2 = 0.0f;
    switch (type) {
    case GGML_Q4_0: r.u = nibbles32(((const block_q4_0 *)p)->qs), r.dw = d, r.mw = -8.0f * d; break;
    case GGML_Q4_1: r.u = nibbles32(((const block_q4_1 *)p)->qs), r.dw = d, r.mw = dmin; break;
    case GGML_Q5_0: {
        const block_q5_0 *b = (const block_q5_0 *)p;
        r.u = nib_hi(nibbles32(b->qs), load_u32(b->qh)), r.dw = d, r.mw = -16.0f * d;
        break;
    }
    case GGML_Q5_1: {
        const block_q5_1 *b = (const block_q5_1 *)p;
        r.u = nib_hi(nibbles32(b->qs), load_u32(b->qh)), r.dw = d, r.mw = dmin;
        break;
    }
    case GGML_Q8_0:
        r.u = _mm256_xor_si256(load256(((const block_q8_0 *)p)->qs), _mm256_set1_epi8((char)0x80));
        r.dw = d, r.mw = -128.0f * d;
        break;
    case GGML_Q4_K: case GGML_Q5_K: {
        const uint8_t *qs = type == GGML_Q4_K ? ((const block_q4_K *)p)->qs : ((const block_q5_K *)p)->qs;
        r.u = _mm256_and_si256(_mm256_srli_epi16(load256(qs + 32 * (c / 2)), 4 * (c & 1)), bytes(15));
        if (type == GGML_Q5_K) {
            const __mmask32 h = _mm256_test_epi8_mask(load256(((const block_q5_K *)p)->qh), bytes(1 << c));
            r.u = nib_hi(r.u, h);
        }
        r.dw = d * (float)sm[c], r.mw = -dmin * (float)sm[8 + c];
        break;
    }
    case GGML_Q6_K: { /* element 32 c + l = 128 a + r: low nibble of ql[64 a + 32 (c' & 1) + l] >> 4 (c' / 2) */
        const block_q6_K *b = (const block_q6_K *)p;
        const int a = c / 4, cc = c % 4;
        const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(load256(b->ql + 64 * a + 32 * (cc & 1)), 4 * (cc / 2)), bytes(15));
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(load256(b->qh + 32 * a), 2 * cc), bytes(3));
        r.u = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
        r.dw = d * (float)b->scales[2 * c], r.dw2 = d * (float)b->scales[2 * c + 1], r.mw = 0.0f;
        break;
    }
    }
    return r;
}

/* the unit's share of activation row i: acc += dot * dw * xd (8 lanes), *off += mw * xs */
TARGET_VNNI INLINE void dot_unit(int type, const unit *w, const int8_t *xq, const xinfo *xi, __m256 *acc, float *off) {
    const __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w->u, _mm256_loadu_si256((const __m256i *)xq));
    if (type == GGML_Q6_K) {
        const __m256 s = _mm256_blend_ps(_mm256_set1_ps(w->dw * xi->d), _mm256_set1_ps(w->dw2 * xi->d), 0xf0);
        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, *acc);
        *off -= 32.0f * (w->dw * xi->s0 + w->dw2 * xi->s1);
    } else {
        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(w->dw * xi->d), *acc);
        *off += w->mw * xi->s;
    }
}

TARGET_VNNI INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* out[i] = W row . x^[i] for i < tt; xq: tt quantized activation rows of xrb bytes */
TARGET_VNNI INLINE void tile_q8(int type, const uint8_t *row, int64_t k, const uint8_t *xq, int64_t xrb, int tt,
                                float *out) {
    const int be = block_elems_of(type), bb = block_bytes_of(type), units = be / 32;
    const int64_t info_off = (k + 63) / 64 * 64;
    __m256 acc[TT_Q8];
    float off[TT_Q8];
    for (int i = 0; i < tt; i++) acc[i] = _mm256_setzero_ps(), off[i] = 0.0f;
    for (int64_t blk = 0; blk < k / be; blk++) {
        const uint8_t *p = row + blk * bb;
        for (int o = 0; o < bb; o += 64) _mm_prefetch((const char *)p + PREFETCH + o, _MM_HINT_T0);
        uint8_t sm[16];
        float d = 0.0f, dmin = 0.0f;
        switch (type) {
        case GGML_Q4_0: case GGML_Q5_0: case GGML_Q8_0: d = half_hw(*(const ggml_half *)p); break;
        case GGML_Q4_1: case GGML_Q5_1: d = half_hw(((const ggml_half *)p)[0]), dmin = half_hw(((const ggml_half *)p)[1]); break;
        case GGML_Q4_K: case GGML_Q5_K:
            d = half_hw(((const ggml_half *)p)[0]), dmin = half_hw(((const ggml_half *)p)[1]);
            k4_unpack(type == GGML_Q4_K ? ((const block_q4_K *)p)->scales : ((const block_q5_K *)p)->scales, sm);
            break;
        case GGML_Q6_K: d = half_hw(((const block_q6_K *)p)->d); break;
        }
#pragma GCC unroll 8
        for (int c = 0; c < units; c++) {
            const unit w = get_unit(type, p, c, sm, d, dmin);
            const int64_t xb = blk * units + c; /* the activations' block */
            for (int i = 0; i < tt; i++) {
                const uint8_t *xr = xq + i * xrb;
                dot_unit(type, &w, (const int8_t *)xr + 32 * xb, (const xinfo *)(xr + info_off) + xb, &acc[i], &off[i]);
            }
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
