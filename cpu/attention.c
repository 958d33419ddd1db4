/* attention: out [t, h, hd] = softmax(q k^T / sqrt(hd)) v per sequence, causal, over the paged KV cache.
 *
 * Layout: q, out [t, h, hd] float32. Caches [num_blocks, block_size, n_kv, hd], float16 (f16 = 1) or
 * float32; key j of sequence s is slot block_tables[s * max_blocks + j / block_size] * block_size +
 * j % block_size. Sequence s owns rows query_start[s] .. + query_len[s] of q and out (other rows of out
 * are not written); its queries are the last query_len of its context_len tokens (query i at position
 * context_len - query_len + i) and see keys j <= position (and j > position - sliding_window when
 * sliding_window > 0). GQA: query head hq reads kv head hq / (h / n_kv). The module has checked every
 * size and block id.
 *
 * Work: one item is (sequence, kv head, tile of queries); its rows are the tile's queries times the
 * h / n_kv query heads of the group (row = query * group + head), so each K and V row is read once per
 * tile for all of them. An item runs an online softmax (flash-attention style) over blocks of KB keys:
 * running max m and sum l per row, O rescaled by e^(m_old - m_new), so memory stays O(rows * hd).
 * Decode (query_len 1) is one tile per (sequence, kv head); prefill tiles hold ~MAX_ROWS rows (64
 * queries for MHA, 36 for a group of 7). While a block computes, the next block's K and V rows are
 * prefetched into L2 (decode reads each row once: ~2x when the cache is not in L3).
 * Threading: items are shared dynamically among the OpenMP team (cpu_threads()), longest tiles first.
 * When there are fewer than 8 items per thread (one sequence decoding alone), each tile's keys are also
 * split in parts of >= MIN_PART keys whose partial (O, m, l) are merged afterwards.
 *
 * Paths (cpu_level()):
 *   scalar  the readable definition: per row, per key, a dot product and the online update with expf.
 *   AVX2    (+FMA, F16C) a block's keys widened by vcvtph2ps and transposed 8x8 to [hd, KB]; scores as
 *           broadcast FMAs over hd, 2 rows x 32 keys at once; V accumulated 2 rows x 32 columns.
 *   AVX-512 (F/BW/VL/DQ; VNNI hosts too) the same with 16 lanes: masked f16 loads for hd % 16 tails,
 *           16x16 transposes, 4 rows x 64 keys of scores in registers, V accumulated 4 rows x 64
 *           columns. exp (both SIMD paths): Cephes' expf range reduction and polynomial, scaled by 2^n
 *           (vscalefps), within ~2 ulp.
 * All arithmetic is float32; float16 caches are widened exactly. Queries are multiplied by
 * float32(1 / sqrt(hd)) before the dot products (the reference scales the scores: an ulp apart).
 * Against the NumPy reference reading the same cache as float32: ~2e-6 of max|v| (summation order, exp);
 * tests assert 1e-5 relative + 1e-5 * max|v| absolute.
 */
#include "common.h"
#include "kernels.h"
#include "simd_math.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define KB 64         /* keys per online-softmax block */
#define MAX_ROWS 256  /* rows (queries x group heads) a prefill tile aims at */
#define MIN_PART 256  /* fewest keys of a part when an item's keys are split among threads */

typedef struct {           /* the rows of one kv head of one sequence */
    const void *k, *v;     /* caches [num_blocks, block_size, n_kv, hd] */
    int f16;
    int64_t bs, n_kv, hd;
    const int32_t *table;  /* the sequence's blocks */
    int64_t head;          /* kv head */
} kv_rows;

typedef struct {     /* what one work item computes */
    int64_t m;       /* rows: queries x group, row r is query r / group, head r % group of the group */
    int64_t group;   /* query heads per kv head */
    int64_t pos0;    /* position of the first query */
    int64_t klo, khi; /* keys [klo, khi) this item reads (its part of the tile's keys) */
    int64_t window;  /* sliding window, 0: none */
} tile_t;

typedef struct {     /* per-thread buffers, 64-byte aligned */
    int64_t hdp;     /* hd rounded up to 16 */
    float *q;        /* [rows, hdp] the tile's queries times 1 / sqrt(hd), zero padded */
    float *o;        /* [rows, hdp] unnormalized output */
    float *mx, *l;   /* [rows] running max and sum */
    float *p;        /* [rows, KB] probabilities (AVX2: scores first) of the current block */
    float *alpha;    /* [rows] rescale of O for the current block */
    float *kt;       /* [hdp, KB] the block's keys, transposed */
    float *vs;       /* [KB, hdp] the block's values, zero padded */
    float *lv;       /* [rows, 16] AVX-512: running sums per lane, reduced at the end */
    int64_t off[KB]; /* element offsets of the block's rows in the caches */
    int64_t next[KB], nnext; /* ... and of the next block's rows, prefetched while this one computes */
} scratch_t;

static inline int64_t kv_offset(const kv_rows *kv, int64_t j) {
    const int64_t slot = (int64_t)kv->table[j / kv->bs] * kv->bs + j % kv->bs;
    return (slot * kv->n_kv + kv->head) * kv->hd;
}

/* keys [lo, hi) row r sees within the item's range */
static inline void row_keys(const tile_t *tl, int64_t r, int64_t *lo, int64_t *hi) {
    const int64_t p = tl->pos0 + r / tl->group;
    int64_t a = tl->window > 0 ? p - tl->window + 1 : 0, b = p + 1;
    *lo = a > tl->klo ? a : tl->klo;
    *hi = b < tl->khi ? b : tl->khi;
}

/* bit i set when key c0 + i (i < n) is visible to row r */
static inline uint64_t row_mask(const tile_t *tl, int64_t r, int64_t c0, int64_t n) {
    int64_t lo, hi;
    row_keys(tl, r, &lo, &hi);
    lo -= c0;
    hi = (hi < c0 + n ? hi : c0 + n) - c0;
    if (lo < 0) lo = 0;
    if (hi <= lo) return 0;
    const uint64_t below_hi = hi >= 64 ? ~0ull : (1ull << hi) - 1;
    return below_hi & ~((1ull << lo) - 1);
}

static inline float cache_at(const void *c, int f16, int64_t i) {
    return f16 ? fp16_to_fp32(((const ggml_half *)c)[i]) : ((const float *)c)[i];
}

/* offsets of the rows of keys c0 .. c0 + n (this block), and of the next block's for prefetch_next */
static inline void block_offsets(const kv_rows *kv, int64_t c0, int64_t n, int64_t end, scratch_t *sc) {
    for (int64_t j = 0; j < n; j++) sc->off[j] = kv_offset(kv, c0 + j);
    const int64_t rest = end - c0 - KB;
    sc->nnext = rest <= 0 ? 0 : rest < KB ? rest : KB;
    for (int64_t j = 0; j < sc->nnext; j++) sc->next[j] = kv_offset(kv, c0 + KB + j);
}

#if CPU_X86
/* K and V rows of the next block's key j into L2, one key per call, spread over the score loop so the
 * requests overlap this block's arithmetic (into L2 rather than L1: L1 prefetches wait on the few L1 miss
 * buffers, and decode, which reads each row once, is bound by memory latency otherwise: ~2x) */
static inline __attribute__((always_inline)) /* (a call would be dropped: gcc deems it pure) */
void prefetch_next(const kv_rows *kv, const scratch_t *sc, int64_t j) {
    if (j >= sc->nnext) return;
    const int64_t es = kv->f16 ? 2 : 4, bytes = kv->hd * es;
    const char *k = (const char *)kv->k + sc->next[j] * es, *v = (const char *)kv->v + sc->next[j] * es;
    for (int64_t b = 0; b < bytes; b += 64) {
        _mm_prefetch(k + b, _MM_HINT_T1);
        _mm_prefetch(v + b, _MM_HINT_T1);
    }
}
#endif

/* ---- scalar: the definition ------------------------------------------------------------------- */

static void tile_scalar(const tile_t *tl, const kv_rows *kv, scratch_t *sc) {
    const int64_t hd = kv->hd, hdp = sc->hdp;
    for (int64_t r = 0; r < tl->m; r++) {
        const float *q = sc->q + r * hdp;
        float *o = sc->o + r * hdp, mx = -INFINITY, l = 0.0f;
        int64_t lo, hi;
        row_keys(tl, r, &lo, &hi);
        for (int64_t j = lo; j < hi; j++) {
            const int64_t off = kv_offset(kv, j);
            float s = 0.0f;
            for (int64_t d = 0; d < hd; d++) s += q[d] * cache_at(kv->k, kv->f16, off + d);
            if (s > mx) { /* new max: rescale what was summed so far */
                const float alpha = expf(mx - s);
                for (int64_t d = 0; d < hd; d++) o[d] *= alpha;
                l *= alpha;
                mx = s;
            }
            const float p = expf(s - mx);
            l += p;
            for (int64_t d = 0; d < hd; d++) o[d] += p * cache_at(kv->v, kv->f16, off + d);
        }
        sc->mx[r] = mx;
        sc->l[r] = l;
    }
}

#if CPU_X86

/* ---- AVX-512 ---------------------------------------------------------------------------------- */

/* 16 values of a cache row from element i, lanes past `mask` zero */
TARGET_AVX512 INLINE __m512 load16(const void *c, int f16, int64_t i, __mmask16 mask) {
    if (f16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, (const ggml_half *)c + i));
    return _mm512_maskz_loadu_ps(mask, (const float *)c + i);
}

/* r[i] = row i of a 16x16 block -> r[i] = column i */
TARGET_AVX512 INLINE void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* u[4i + k], 128-bit lane L: column 4L + k of rows 4i .. 4i + 3 */
        const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int k = 0; k < 4; k++) { /* column 4L + k = lane L of u[k], u[4 + k], u[8 + k], u[12 + k] */
        const __m512 s0 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x44);
        const __m512 s1 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xee);
        const __m512 s2 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x44);
        const __m512 s3 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xee);
        r[k] = _mm512_shuffle_f32x4(s0, s2, 0x88);
        r[4 + k] = _mm512_shuffle_f32x4(s0, s2, 0xdd);
        r[8 + k] = _mm512_shuffle_f32x4(s1, s3, 0x88);
        r[12 + k] = _mm512_shuffle_f32x4(s1, s3, 0xdd);
    }
}

/* kt [hd, KB] = keys c0 .. c0 + n of the block (columns >= n zero); vs [KB, hdp] = their values */
TARGET_AVX512 INLINE void load_block512(const kv_rows *kv, const int f16, int64_t n, scratch_t *sc) {
    const int64_t hd = kv->hd, hdp = sc->hdp;
    for (int64_t kg = 0; kg < KB; kg += 16) {
        for (int64_t dg = 0; dg < hd; dg += 16) {
            const int64_t dn = hd - dg < 16 ? hd - dg : 16;
            const __mmask16 mask = (__mmask16)((1u << dn) - 1);
            __m512 r[16];
            for (int i = 0; i < 16; i++)
                r[i] = kg + i < n ? load16(kv->k, f16, sc->off[kg + i] + dg, mask) : _mm512_setzero_ps();
            transpose16(r);
            float *kt = sc->kt + dg * KB + kg;
            if (dn == 16) /* constant indices keep r in registers */
                for (int i = 0; i < 16; i++) _mm512_store_ps(kt + i * KB, r[i]);
            else
                for (int i = 0; i < 16; i++)
                    if (i < dn) _mm512_store_ps(kt + i * KB, r[i]);
        }
    }
    for (int64_t j = 0; j < n; j++)
        for (int64_t dg = 0; dg < hd; dg += 16) {
            const int64_t dn = hd - dg < 16 ? hd - dg : 16;
            const __mmask16 mask = (__mmask16)((1u << dn) - 1);
            _mm512_store_ps(sc->vs + j * hdp + dg, load16(kv->v, f16, sc->off[j] + dg, mask));
        }
}

/* every lane: the max of v's lanes */
TARGET_AVX512 INLINE __m512 allmax512(__m512 v) {
    v = _mm512_max_ps(v, _mm512_shuffle_f32x4(v, v, 0x4e));
    v = _mm512_max_ps(v, _mm512_shuffle_f32x4(v, v, 0xb1));
    v = _mm512_max_ps(v, _mm512_permute_ps(v, 0x4e));
    return _mm512_max_ps(v, _mm512_permute_ps(v, 0xb1));
}

/* rows r0 .. r0 + R: scores of the block (4 x 16 keys in registers), then the online-softmax update of
 * mx, lv and alpha, and the block's probabilities p */
TARGET_AVX512 INLINE void softmax_rows512(const int R, const tile_t *tl, const kv_rows *kv, int64_t r0,
                                          int64_t c0, int64_t n, scratch_t *sc) {
    const int64_t hd = kv->hd;
    __m512 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
    const float *q = sc->q + r0 * sc->hdp;
    for (int64_t d = 0; d < hd; d++) {
        if (r0 == 0) prefetch_next(kv, sc, d);
        const float *kd = sc->kt + d * KB;
        const __m512 k0 = _mm512_load_ps(kd), k1 = _mm512_load_ps(kd + 16);
        const __m512 k2 = _mm512_load_ps(kd + 32), k3 = _mm512_load_ps(kd + 48);
        for (int r = 0; r < R; r++) {
            const __m512 b = _mm512_set1_ps(q[r * sc->hdp + d]);
            acc[r][0] = _mm512_fmadd_ps(b, k0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(b, k1, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(b, k2, acc[r][2]);
            acc[r][3] = _mm512_fmadd_ps(b, k3, acc[r][3]);
        }
    }
    if (r0 == 0)
        for (int64_t j = hd; j < sc->nnext; j++) prefetch_next(kv, sc, j); /* hd < KB */
    for (int r = 0; r < R; r++) {
        const int64_t row = r0 + r;
        const uint64_t bits = row_mask(tl, row, c0, n);
        float *p = sc->p + row * KB;
        if (!bits) { /* no visible key in this block */
            sc->alpha[row] = 1.0f;
            for (int c = 0; c < 4; c++) _mm512_store_ps(p + 16 * c, _mm512_setzero_ps());
            continue;
        }
        __mmask16 mk[4];
        __m512 mv = _mm512_set1_ps(sc->mx[row]);
        for (int c = 0; c < 4; c++) {
            mk[c] = (__mmask16)(bits >> (16 * c));
            mv = _mm512_mask_max_ps(mv, mk[c], mv, acc[r][c]);
        }
        const __m512 mnew = allmax512(mv), mold = _mm512_set1_ps(sc->mx[row]);
        __m512 sum = _mm512_setzero_ps();
        for (int c = 0; c < 4; c++) {
            const __m512 e = _mm512_maskz_mov_ps(mk[c], exp512(_mm512_sub_ps(acc[r][c], mnew)));
            sum = _mm512_add_ps(sum, e);
            _mm512_store_ps(p + 16 * c, e);
        }
        const __m512 alpha = exp512(_mm512_sub_ps(mold, mnew)); /* ~0 on the first visible block (-inf) */
        float *lv = sc->lv + 16 * row;
        _mm512_store_ps(lv, _mm512_fmadd_ps(_mm512_load_ps(lv), alpha, sum));
        sc->alpha[row] = _mm512_cvtss_f32(alpha);
        sc->mx[row] = _mm512_cvtss_f32(mnew);
    }
}

/* O[rows r0 .. + R, columns col .. + 16 C] = alpha O + p V */
TARGET_AVX512 INLINE void pv_rows512(const int R, const int C, int64_t r0, int64_t col, int64_t n,
                                     scratch_t *sc) {
    const int64_t hdp = sc->hdp;
    float *o = sc->o + r0 * hdp + col;
    const float *p = sc->p + r0 * KB, *vs = sc->vs + col;
    __m512 acc[4][4];
    for (int r = 0; r < R; r++) {
        const __m512 a = _mm512_set1_ps(sc->alpha[r0 + r]);
        for (int c = 0; c < C; c++) acc[r][c] = _mm512_mul_ps(_mm512_load_ps(o + r * hdp + 16 * c), a);
    }
    for (int64_t j = 0; j < n; j++) {
        __m512 v[4];
        for (int c = 0; c < C; c++) v[c] = _mm512_load_ps(vs + j * hdp + 16 * c);
        for (int r = 0; r < R; r++) {
            const __m512 b = _mm512_set1_ps(p[r * KB + j]);
            for (int c = 0; c < C; c++) acc[r][c] = _mm512_fmadd_ps(b, v[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) _mm512_store_ps(o + r * hdp + 16 * c, acc[r][c]);
}

#define PV512_COLS(R)                                                                     \
    do {                                                                                  \
        int64_t col = 0;                                                                  \
        for (; col + 64 <= hdp; col += 64) pv_rows512(R, 4, r0, col, n, sc);              \
        switch ((hdp - col) / 16) {                                                       \
        case 3: pv_rows512(R, 3, r0, col, n, sc); break;                                  \
        case 2: pv_rows512(R, 2, r0, col, n, sc); break;                                  \
        case 1: pv_rows512(R, 1, r0, col, n, sc); break;                                  \
        }                                                                                 \
    } while (0)

TARGET_AVX512 INLINE void tile_avx512_as(const int f16, const tile_t *tl, const kv_rows *kv, scratch_t *sc) {
    const int64_t hdp = sc->hdp, m = tl->m;
    for (int64_t r = 0; r < m; r++) _mm512_store_ps(sc->lv + 16 * r, _mm512_setzero_ps());
    int64_t start, end, lo, hi;
    row_keys(tl, 0, &start, &hi);
    row_keys(tl, m - 1, &lo, &end); /* rows are in position order: first row starts, last row ends */
    for (int64_t c0 = start; c0 < end; c0 += KB) {
        const int64_t n = end - c0 < KB ? end - c0 : KB;
        block_offsets(kv, c0, n, end, sc);
        load_block512(kv, f16, n, sc);
        int64_t r0 = 0;
        for (; r0 + 4 <= m; r0 += 4) softmax_rows512(4, tl, kv, r0, c0, n, sc);
        switch (m - r0) {
        case 3: softmax_rows512(3, tl, kv, r0, c0, n, sc); break;
        case 2: softmax_rows512(2, tl, kv, r0, c0, n, sc); break;
        case 1: softmax_rows512(1, tl, kv, r0, c0, n, sc); break;
        }
        for (r0 = 0; r0 + 4 <= m; r0 += 4) PV512_COLS(4);
        switch (m - r0) {
        case 3: PV512_COLS(3); break;
        case 2: PV512_COLS(2); break;
        case 1: PV512_COLS(1); break;
        }
    }
    for (int64_t r = 0; r < m; r++) sc->l[r] = _mm512_reduce_add_ps(_mm512_load_ps(sc->lv + 16 * r));
}

TARGET_AVX512 static void tile_avx512(const tile_t *tl, const kv_rows *kv, scratch_t *sc) {
    if (kv->f16) tile_avx512_as(1, tl, kv, sc);
    else tile_avx512_as(0, tl, kv, sc);
}

/* ---- AVX2 ------------------------------------------------------------------------------------- */

/* 8 values of a cache row from element i; dn < 8 reads only dn, the rest zero */
TARGET_AVX2 INLINE __m256 load8(const void *c, int f16, int64_t i, int64_t dn) {
    if (dn == 8) {
        if (f16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const ggml_half *)c + i)));
        return _mm256_loadu_ps((const float *)c + i);
    }
    float tmp[8] = {0};
    for (int64_t d = 0; d < dn; d++) tmp[d] = cache_at(c, f16, i + d);
    return _mm256_loadu_ps(tmp);
}

TARGET_AVX2 INLINE void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        const __m256d a = _mm256_castps_pd(t[4 * i]), b = _mm256_castps_pd(t[4 * i + 1]);
        const __m256d c = _mm256_castps_pd(t[4 * i + 2]), d = _mm256_castps_pd(t[4 * i + 3]);
        u[4 * i] = _mm256_castpd_ps(_mm256_unpacklo_pd(a, c));
        u[4 * i + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a, c));
        u[4 * i + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(b, d));
        u[4 * i + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(b, d));
    }
    for (int k = 0; k < 4; k++) {
        r[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
        r[4 + k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
    }
}

TARGET_AVX2 INLINE void load_block256(const kv_rows *kv, const int f16, int64_t n, scratch_t *sc) {
    const int64_t hd = kv->hd, hdp = sc->hdp;
    for (int64_t kg = 0; kg < KB; kg += 8)
        for (int64_t dg = 0; dg < hd; dg += 8) {
            const int64_t dn = hd - dg < 8 ? hd - dg : 8;
            __m256 r[8];
            for (int i = 0; i < 8; i++)
                r[i] = kg + i < n ? load8(kv->k, f16, sc->off[kg + i] + dg, dn) : _mm256_setzero_ps();
            transpose8(r);
            for (int i = 0; i < 8; i++)
                if (i < dn) _mm256_store_ps(sc->kt + (dg + i) * KB + kg, r[i]);
        }
    for (int64_t j = 0; j < n; j++) {
        for (int64_t dg = 0; dg < hd; dg += 8)
            _mm256_store_ps(sc->vs + j * hdp + dg,
                            load8(kv->v, f16, sc->off[j] + dg, hd - dg < 8 ? hd - dg : 8));
        for (int64_t d = (hd + 7) / 8 * 8; d < hdp; d++) sc->vs[j * hdp + d] = 0.0f;
    }
}

/* scores of rows r0 .. + R (R <= 2) into p, keys kq .. kq + 32 */
TARGET_AVX2 INLINE void scores_rows256(const int R, const kv_rows *kv, int64_t r0, int64_t kq,
                                       scratch_t *sc) {
    const int64_t hd = kv->hd;
    __m256 acc[2][4];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = _mm256_setzero_ps();
    const float *q = sc->q + r0 * sc->hdp;
    for (int64_t d = 0; d < hd; d++) {
        if (r0 == 0 && kq == 0) prefetch_next(kv, sc, d);
        const float *kd = sc->kt + d * KB + kq;
        __m256 k[4];
        for (int c = 0; c < 4; c++) k[c] = _mm256_load_ps(kd + 8 * c);
        for (int r = 0; r < R; r++) {
            const __m256 b = _mm256_broadcast_ss(q + r * sc->hdp + d);
            for (int c = 0; c < 4; c++) acc[r][c] = _mm256_fmadd_ps(b, k[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < 4; c++) _mm256_store_ps(sc->p + (r0 + r) * KB + kq + 8 * c, acc[r][c]);
}

TARGET_AVX2 INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* row's scores in p -> probabilities, with the online update of mx, l and alpha */
TARGET_AVX2 INLINE void softmax_row256(const tile_t *tl, int64_t row, int64_t c0, int64_t n, scratch_t *sc) {
    const uint64_t bits = row_mask(tl, row, c0, n);
    float *p = sc->p + row * KB;
    if (!bits) {
        sc->alpha[row] = 1.0f;
        for (int c = 0; c < KB; c += 8) _mm256_store_ps(p + c, _mm256_setzero_ps());
        return;
    }
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const __m256i lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256 mk[KB / 8], mv = ninf;
    for (int c = 0; c < KB / 8; c++) { /* lane i of mk[c]: all ones when bit 8c + i is set */
        const __m256i b = _mm256_and_si256(_mm256_set1_epi32((int)((bits >> (8 * c)) & 0xff)), lane);
        mk[c] = _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, lane));
        const __m256 s = _mm256_load_ps(p + 8 * c);
        mv = _mm256_max_ps(mv, _mm256_blendv_ps(ninf, s, mk[c]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float mnew = fmaxf(sc->mx[row], _mm_cvtss_f32(m4));
    const __m256 vm = _mm256_set1_ps(mnew);
    __m256 sum = _mm256_setzero_ps();
    for (int c = 0; c < KB / 8; c++) {
        const __m256 e = _mm256_and_ps(exp256(_mm256_sub_ps(_mm256_load_ps(p + 8 * c), vm)), mk[c]);
        sum = _mm256_add_ps(sum, e);
        _mm256_store_ps(p + 8 * c, e);
    }
    const float alpha = expf(sc->mx[row] - mnew);
    sc->alpha[row] = alpha;
    sc->l[row] = sc->l[row] * alpha + hsum256(sum);
    sc->mx[row] = mnew;
}

TARGET_AVX2 INLINE void pv_rows256(const int R, const int C, int64_t r0, int64_t col, int64_t n,
                                   scratch_t *sc) {
    const int64_t hdp = sc->hdp;
    float *o = sc->o + r0 * hdp + col;
    const float *p = sc->p + r0 * KB, *vs = sc->vs + col;
    __m256 acc[2][4];
    for (int r = 0; r < R; r++) {
        const __m256 a = _mm256_set1_ps(sc->alpha[r0 + r]);
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_mul_ps(_mm256_load_ps(o + r * hdp + 8 * c), a);
    }
    for (int64_t j = 0; j < n; j++) {
        __m256 v[4];
        for (int c = 0; c < C; c++) v[c] = _mm256_load_ps(vs + j * hdp + 8 * c);
        for (int r = 0; r < R; r++) {
            const __m256 b = _mm256_broadcast_ss(p + r * KB + j);
            for (int c = 0; c < C; c++) acc[r][c] = _mm256_fmadd_ps(b, v[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) _mm256_store_ps(o + r * hdp + 8 * c, acc[r][c]);
}

TARGET_AVX2 INLINE void tile_avx2_as(const int f16, const tile_t *tl, const kv_rows *kv, scratch_t *sc) {
    const int64_t hd = kv->hd, hdp = sc->hdp, m = tl->m;
    int64_t start, end, lo, hi;
    row_keys(tl, 0, &start, &hi);
    row_keys(tl, m - 1, &lo, &end);
    for (int64_t c0 = start; c0 < end; c0 += KB) {
        const int64_t n = end - c0 < KB ? end - c0 : KB;
        block_offsets(kv, c0, n, end, sc);
        load_block256(kv, f16, n, sc);
        for (int64_t r0 = 0; r0 < m; r0 += 2)
            for (int64_t kq = 0; kq < KB; kq += 32) {
                if (r0 + 1 < m) scores_rows256(2, kv, r0, kq, sc);
                else scores_rows256(1, kv, r0, kq, sc);
            }
        for (int64_t j = hd; j < sc->nnext; j++) prefetch_next(kv, sc, j); /* hd < KB */
        for (int64_t r = 0; r < m; r++) softmax_row256(tl, r, c0, n, sc);
        for (int64_t r0 = 0; r0 < m; r0 += 2)
            for (int64_t col = 0; col < hdp; col += 32) { /* hdp is a multiple of 16: 32 or 16 columns */
                const int two = r0 + 1 < m, wide = col + 32 <= hdp;
                if (two && wide) pv_rows256(2, 4, r0, col, n, sc);
                else if (two) pv_rows256(2, 2, r0, col, n, sc);
                else if (wide) pv_rows256(1, 4, r0, col, n, sc);
                else pv_rows256(1, 2, r0, col, n, sc);
            }
    }
}

TARGET_AVX2 static void tile_avx2(const tile_t *tl, const kv_rows *kv, scratch_t *sc) {
    if (kv->f16) tile_avx2_as(1, tl, kv, sc);
    else tile_avx2_as(0, tl, kv, sc);
}

#endif /* CPU_X86 */

/* ---- work items, threads, and the merge of split key ranges ----------------------------------- */

typedef struct {
    int32_t seq, head;    /* sequence, kv head */
    int32_t q0, nq;       /* the tile: queries q0 .. q0 + nq of the sequence */
    int32_t part, nparts; /* part of the tile's key range */
    int64_t partial;      /* offset of its (O, m, l) in the partials buffer; -1: writes out directly */
} item_t;

typedef struct {
    const float *q;
    float *out;
    int64_t h, n_kv, hd, block_size, max_blocks, window;
    const void *k_cache, *v_cache;
    int f16;
    int64_t num_seqs;
    const int32_t *query_start, *query_len, *context_len, *block_tables;
} problem_t;

static void *alloc64(size_t bytes) {
    void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) {
        fprintf(stderr, "cpu_attention: out of memory (%zu bytes)\n", bytes);
        abort();
    }
    return p;
}

static scratch_t *scratch_new(int64_t rows, int64_t hd) {
    scratch_t *sc = alloc64(sizeof(scratch_t));
    sc->hdp = (hd + 15) / 16 * 16;
    sc->q = alloc64(4 * rows * sc->hdp);
    sc->o = alloc64(4 * rows * sc->hdp);
    sc->mx = alloc64(4 * rows);
    sc->l = alloc64(4 * rows);
    sc->lv = alloc64(4 * 16 * rows);
    sc->alpha = alloc64(4 * rows);
    sc->p = alloc64(4 * rows * KB);
    sc->kt = alloc64(4 * sc->hdp * KB);
    sc->vs = alloc64(4 * KB * sc->hdp);
    return sc;
}

static void scratch_free(scratch_t *sc) {
    free(sc->q), free(sc->o), free(sc->mx), free(sc->l), free(sc->lv), free(sc->alpha), free(sc->p);
    free(sc->kt), free(sc->vs);
    free(sc);
}

/* the tile and key range of an item */
static tile_t item_tile(const problem_t *pb, const item_t *it) {
    const int64_t ctx = pb->context_len[it->seq], qlen = pb->query_len[it->seq];
    tile_t tl = {.group = pb->h / pb->n_kv, .pos0 = ctx - qlen + it->q0, .window = pb->window};
    tl.m = it->nq * tl.group;
    const int64_t last = tl.pos0 + it->nq - 1;
    int64_t lo = tl.window > 0 ? tl.pos0 - tl.window + 1 : 0;
    if (lo < 0) lo = 0;
    const int64_t keys = last + 1 - lo, per = (keys + it->nparts - 1) / it->nparts;
    tl.klo = lo + it->part * per;
    tl.khi = tl.klo + per < last + 1 ? tl.klo + per : last + 1;
    return tl;
}

static void run_item(const problem_t *pb, const item_t *it, scratch_t *sc, float *partials) {
    const tile_t tl = item_tile(pb, it);
    const int64_t hd = pb->hd, hdp = sc->hdp, g = tl.group, h = pb->h;
    const int64_t row0 = pb->query_start[it->seq] + it->q0;
    const kv_rows kv = {.k = pb->k_cache, .v = pb->v_cache, .f16 = pb->f16, .bs = pb->block_size,
                        .n_kv = pb->n_kv, .hd = hd, .table = pb->block_tables + it->seq * pb->max_blocks,
                        .head = it->head};
    const float scale = (float)(1.0 / sqrt((double)hd)); /* as the reference's np.float32(1 / np.sqrt(hd)) */
    for (int64_t r = 0; r < tl.m; r++) { /* row r: query r / g, head head * g + r % g */
        const float *src = pb->q + ((row0 + r / g) * h + it->head * g + r % g) * hd;
        for (int64_t d = 0; d < hd; d++) sc->q[r * hdp + d] = src[d] * scale;
        memset(sc->q + r * hdp + hd, 0, 4 * (hdp - hd));
        memset(sc->o + r * hdp, 0, 4 * hdp);
        sc->mx[r] = -INFINITY;
        sc->l[r] = 0.0f;
    }
    switch (cpu_level()) {
#if CPU_X86
    case LEVEL_VNNI:
    case LEVEL_AVX512: tile_avx512(&tl, &kv, sc); break;
    case LEVEL_AVX2: tile_avx2(&tl, &kv, sc); break;
#endif
    default: tile_scalar(&tl, &kv, sc); break;
    }
    if (it->partial >= 0) { /* [m, hdp] O, then [m] max, then [m] sum */
        float *dst = partials + it->partial;
        memcpy(dst, sc->o, 4 * tl.m * hdp);
        memcpy(dst + tl.m * hdp, sc->mx, 4 * tl.m);
        memcpy(dst + tl.m * (hdp + 1), sc->l, 4 * tl.m);
        return;
    }
    for (int64_t r = 0; r < tl.m; r++) {
        float *dst = pb->out + ((row0 + r / g) * h + it->head * g + r % g) * hd;
        const float inv = 1.0f / sc->l[r];
        for (int64_t d = 0; d < hd; d++) dst[d] = sc->o[r * hdp + d] * inv;
    }
}

/* out rows of a split tile from its nparts partials: O = sum_p e^(m_p - M) O_p / sum_p e^(m_p - M) l_p */
static void merge_parts(const problem_t *pb, const item_t *first, const float *partials, int64_t hdp) {
    const tile_t tl = item_tile(pb, first);
    const int64_t hd = pb->hd, g = tl.group, h = pb->h, m = tl.m, np = first->nparts;
    const int64_t row0 = pb->query_start[first->seq] + first->q0;
    for (int64_t r = 0; r < m; r++) {
        float mmax = -INFINITY, l = 0.0f;
        for (int64_t p = 0; p < np; p++) mmax = fmaxf(mmax, partials[first[p].partial + m * hdp + r]);
        float *dst = pb->out + ((row0 + r / g) * h + first->head * g + r % g) * hd;
        for (int64_t d = 0; d < hd; d++) dst[d] = 0.0f;
        for (int64_t p = 0; p < np; p++) {
            const float *part = partials + first[p].partial;
            const float w = part[m * hdp + r] == -INFINITY ? 0.0f : expf(part[m * hdp + r] - mmax);
            l += w * part[m * (hdp + 1) + r];
            for (int64_t d = 0; d < hd; d++) dst[d] += w * part[r * hdp + d];
        }
        for (int64_t d = 0; d < hd; d++) dst[d] /= l;
    }
}

/* queries per tile of a sequence: about MAX_ROWS rows, tiles of equal size */
static int64_t tile_queries(int64_t qlen, int64_t group) {
    int64_t qt = MAX_ROWS / group;
    qt = qt < 8 ? 8 : qt > 64 ? 64 : qt;
    const int64_t tiles = (qlen + qt - 1) / qt;
    return (qlen + tiles - 1) / tiles;
}

/* the work items (written when items is not NULL) and their count; each tile's keys split in up to
 * `parts` parts of >= MIN_PART keys; *partial_floats: the partials buffer those parts need */
static int64_t plan_items(const problem_t *pb, int64_t parts, item_t *items, int64_t *partial_floats) {
    const int64_t group = pb->h / pb->n_kv, hdp = (pb->hd + 15) / 16 * 16;
    int64_t i = 0;
    *partial_floats = 0;
    for (int64_t s = 0; s < pb->num_seqs; s++) {
        const int64_t qlen = pb->query_len[s], ctx = pb->context_len[s], qt = tile_queries(qlen, group);
        for (int64_t q0 = (qlen - 1) / qt * qt; q0 >= 0; q0 -= qt) { /* the longest tiles first */
            const int64_t nq = qlen - q0 < qt ? qlen - q0 : qt;
            int64_t keys = ctx - qlen + q0 + nq;
            if (pb->window > 0 && keys > pb->window + nq - 1) keys = pb->window + nq - 1;
            int64_t np = keys / MIN_PART < parts ? keys / MIN_PART : parts;
            np = np < 1 ? 1 : np;
            for (int64_t g = 0; g < pb->n_kv; g++)
                for (int64_t part = 0; part < np; part++, i++) {
                    if (items)
                        items[i] = (item_t){.seq = (int32_t)s, .head = (int32_t)g, .q0 = (int32_t)q0,
                                            .nq = (int32_t)nq, .part = (int32_t)part, .nparts = (int32_t)np,
                                            .partial = np > 1 ? *partial_floats : -1};
                    if (np > 1) *partial_floats += nq * group * (hdp + 2);
                }
        }
    }
    return i;
}

void cpu_attention(const float *q, int64_t t, int64_t h, int64_t n_kv, int64_t hd, const void *k_cache,
                   const void *v_cache, int f16, int64_t block_size, int64_t num_seqs,
                   const int32_t *query_start, const int32_t *query_len, const int32_t *context_len,
                   const int32_t *block_tables, int64_t max_blocks, int64_t sliding_window, float *out) {
    (void)t; /* rows are addressed through query_start; the module checked them against t */
    if (num_seqs <= 0 || hd <= 0 || h <= 0 || n_kv <= 0 || h % n_kv || block_size <= 0) return;
    const problem_t pb = {.q = q, .out = out, .h = h, .n_kv = n_kv, .hd = hd, .block_size = block_size,
                          .max_blocks = max_blocks, .window = sliding_window > 0 ? sliding_window : 0,
                          .k_cache = k_cache, .v_cache = v_cache, .f16 = f16, .num_seqs = num_seqs,
                          .query_start = query_start, .query_len = query_len, .context_len = context_len,
                          .block_tables = block_tables};
    const int64_t group = h / n_kv, hdp = (hd + 15) / 16 * 16;
    const int threads = cpu_threads();

    /* few tiles (one sequence decoding alone): split their keys so that every thread has work */
    int64_t partial_floats, max_q = 1;
    const int64_t tiles = plan_items(&pb, 1, NULL, &partial_floats);
    const int64_t parts = threads > 1 && tiles < 8 * threads ? (8 * threads + tiles - 1) / tiles : 1;
    const int64_t nitems = plan_items(&pb, parts, NULL, &partial_floats);
    item_t *items = alloc64(sizeof(item_t) * nitems);
    plan_items(&pb, parts, items, &partial_floats);
    for (int64_t k = 0; k < nitems; k++) max_q = items[k].nq > max_q ? items[k].nq : max_q;
    float *partials = partial_floats ? alloc64(4 * partial_floats) : NULL;

#pragma omp parallel num_threads(threads) if (nitems > 1)
    {
        scratch_t *sc = scratch_new(max_q * group, hd);
#pragma omp for schedule(dynamic, 1)
        for (int64_t k = 0; k < nitems; k++) run_item(&pb, &items[k], sc, partials);
        scratch_free(sc);
        if (partials) {
#pragma omp for schedule(dynamic, 1)
            for (int64_t k = 0; k < nitems; k++)
                if (items[k].nparts > 1 && items[k].part == 0) merge_parts(&pb, &items[k], partials, hdp);
        }
    }
    free(partials);
    free(items);
}
