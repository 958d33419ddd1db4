/* quantize_q8: float32 activations x [t, k] -> int8 blocks with one float scale per 32 values, in the
 * packed layout matmul_q8.c reads (cpu/q8.h: 16 blocks per 768-byte group record, values interleaved
 * 4 bytes per block so a zmm lane holds one block; block and half-block sums for the weights' offsets).
 *
 * Per block of 32: d = max|x| / 127, q = round_half_even(x * (1 / d)), |q| <= 127 (never -128, so the
 * AVX2 sign trick and maddubs stay inside int16); a block with max|x| < 1e-30 is all zero (d = 0).
 * Error per value |x - d q| <= d / 2 = max|x| / 254 of its block. x must be finite.
 *
 * Paths: scalar (the definition), AVX2 (ymm), AVX-512 F/BW (zmm, also taken at the VNNI level); all three
 * give the same bytes (max is exact, d and 1 / d are the same scalar divisions, x * (1 / d) is one float
 * multiplication, and nearbyintf and cvtps2dq both round half to even). Rows are shared among the OpenMP
 * team when t * k >= 65536.
 */
#include "common.h"
#include "kernels.h"
#include "q8.h"
#include "q8_block.h"

/* block b of a packed row: its 8 four-byte chunks into lane b % 16 of its group, then the floats */
static void store_block(uint8_t *row, int64_t b, const qblock *qb) {
    uint8_t *rec = row + b / Q8_LANES * Q8_GROUP_BYTES;
    const int lane = (int)(b % Q8_LANES);
    for (int c = 0; c < Q8_BLOCK / 4; c++) memcpy(rec + 64 * c + 4 * lane, qb->q + 4 * c, 4);
    ((float *)(rec + Q8_OFF_D))[lane] = qb->d;
    ((float *)(rec + Q8_OFF_S))[lane] = qb->d * (float)(qb->sum[0] + qb->sum[1]);
    ((float *)(rec + Q8_OFF_S16))[lane] = qb->d * (float)qb->sum[0];
    ((float *)(rec + Q8_OFF_S16 + 64))[lane] = qb->d * (float)qb->sum[1];
}

static void quantize_row(cpu_level_t level, const float *x, int64_t k, uint8_t *row) {
    const int64_t nb = k / Q8_BLOCK;
    if (nb % Q8_LANES) memset(row + nb / Q8_LANES * Q8_GROUP_BYTES, 0, Q8_GROUP_BYTES); /* zero lanes past k */
    for (int64_t b = 0; b < nb; b++) {
        qblock qb;
#if CPU_X86
        if (level >= LEVEL_AVX512) quantize_block_avx512(x + b * Q8_BLOCK, &qb);
        else if (level == LEVEL_AVX2) quantize_block_avx2(x + b * Q8_BLOCK, &qb);
        else
#endif
            quantize_block_scalar(x + b * Q8_BLOCK, &qb);
        store_block(row, b, &qb);
    }
}

int64_t cpu_q8_bytes(int64_t t, int64_t k) { return t * q8_row_bytes(k); }

int cpu_quantize_q8(const float *x, int64_t t, int64_t k, uint8_t *xq) {
    if (k <= 0 || k % Q8_BLOCK || t < 0) return KERR_SHAPE;
    const cpu_level_t level = cpu_level();
    const int64_t row_bytes = q8_row_bytes(k);
#pragma omp parallel for schedule(static) num_threads(cpu_threads()) if (t * k >= 65536)
    for (int64_t r = 0; r < t; r++) quantize_row(level, x + r * k, k, xq + r * row_bytes);
    return 0;
}
