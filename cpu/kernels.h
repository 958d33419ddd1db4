/* The C entry points of the CPU kernels, one operation per file; cpu/module.c exposes them to Python.
 * Shapes are in elements, row-major; every float array is float32. Functions returning int give 0 on
 * success and a negative code on a bad argument (KERR_*), which the module turns into ValueError. */
#ifndef GGUF_SERVE_CPU_KERNELS_H
#define GGUF_SERVE_CPU_KERNELS_H

#include <stdint.h>

#define KERR_TYPE (-1)  /* weight type not supported */
#define KERR_SHAPE (-2) /* k not a multiple of the type's block, or another shape mismatch */

/* matvec.c: y[i, j] (row stride ldy) = sum_k W[j, k] * x[i, k] for i < t, j < n.
 * W: n rows of row_bytes bytes, each k elements in GGUF blocks of `type`. Fused dequantize x vector:
 * each weight byte is read once per call for all t rows (t small: decode). */
int cpu_matvec(int type, const uint8_t *w, int64_t row_bytes, int64_t n, int64_t k, const float *x,
               int64_t t, float *y, int64_t ldy);
/* The parts of one projection (q | k | v, gate | up) in one call: part p (types[p], ws[p], row_bytes[p],
 * ns[p] rows) writes y's columns from ns[0] + ... + ns[p - 1]; ldy >= their sum. 1 <= nparts <= 8. */
#define MATVEC_MAX_PARTS 8
int cpu_matvec_parts(int nparts, const int *types, const uint8_t *const *ws, const int64_t *row_bytes,
                     const int64_t *ns, int64_t k, const float *x, int64_t t, float *y, int64_t ldy);

/* matvec_q8.c: as cpu_matvec_parts, with x quantized to int8 (one scale per 32 values) and integer dot
 * products: the decode path for rows whose logits are read. Q4_0 .. Q8_0, Q4_K, Q5_K, Q6_K on the AVX-512
 * VNNI level only (cpu_matvec_q8_supported); otherwise KERR_TYPE. */
int cpu_matvec_q8_parts(int nparts, const int *types, const uint8_t *const *ws, const int64_t *row_bytes,
                        const int64_t *ns, int64_t k, const float *x, int64_t t, float *y, int64_t ldy);
int cpu_matvec_q8_supported(int type);

/* dequant.c: out[r, :] = W[row r] as float32 [k], for rows[r] (r < nrows), or row0 + r when rows is NULL */
int cpu_dequant_rows(int type, const uint8_t *w, int64_t row_bytes, int64_t k, const int32_t *rows,
                     int64_t row0, int64_t nrows, float *out);

/* rmsnorm.c: out[t, d] = x[t, d] / sqrt(mean(x[t]^2) + eps) * w[d] */
void cpu_rmsnorm(const float *x, const float *w, float eps, int64_t t, int64_t d, float *out);

/* rope.c: cs [t, 2, half] = cos, sin of pos[r] * inv_freq[i]; then x [t, h, hd] rotated in place over its
 * first 2 * half dims by cs; neox pairs (i, i + half), otherwise adjacent pairs (2i, 2i + 1) */
void cpu_rope_table(const int32_t *pos, int64_t t, const float *inv_freq, int64_t half, float *cs);
void cpu_rope(float *x, int64_t t, int64_t h, int64_t hd, const float *cs, int64_t half, int neox);

/* swiglu.c: out[t, f] = silu(gate_up[t, f]) * gate_up[t, F + f], gate_up [t, 2F] */
void cpu_swiglu(const float *gate_up, int64_t t, int64_t f, float *out);

/* kv_write.c: caches [slots, row] (row = n_kv * hd) of float16 (f16 = 1) or float32;
 * cache[slots[i], :] = k[i, :] (and v) for i < t */
void cpu_kv_write(void *k_cache, void *v_cache, int f16, const float *k, const float *v,
                  const int32_t *slots, int64_t t, int64_t row);

/* attention.c: out [t, h, hd] = softmax(q k^T / sqrt(hd)) v per sequence, causal, GQA (h % n_kv == 0),
 * over paged caches [num_blocks, block_size, n_kv, hd] (float16 when f16, else float32), accumulating
 * in float32. Sequence s owns rows query_start[s] .. + query_len[s] of q/out; its queries are the last
 * query_len[s] of context_len[s] tokens; its blocks are block_tables[s * max_blocks ...].
 * sliding_window > 0: query at position p sees keys p - sliding_window < j <= p. */
void cpu_attention(const float *q, int64_t t, int64_t h, int64_t n_kv, int64_t hd, const void *k_cache,
                   const void *v_cache, int f16, int64_t block_size, int64_t num_seqs,
                   const int32_t *query_start, const int32_t *query_len, const int32_t *context_len,
                   const int32_t *block_tables, int64_t max_blocks, int64_t sliding_window, float *out);

/* ---- int8-activation matmul (prefill, t >= 16) ---- */

#define KERR_MEMORY (-3) /* matmul_q8: no memory for the unpacked weight tiles */

/* quantize_q8.c: x [t, k] float32 (k % 32 == 0) -> xq, cpu_q8_bytes(t, k) bytes: int8 blocks of 32 with a
 * float scale each, in the interleaved group layout of cpu/q8.h */
int64_t cpu_q8_bytes(int64_t t, int64_t k);
int cpu_quantize_q8(const float *x, int64_t t, int64_t k, uint8_t *xq);

/* matmul_q8.c: y[i, j] (row stride ldy >= n) = sum_k W[j, k] * xq[i, k] for i < t, j < n; W as in
 * cpu_matvec, xq from cpu_quantize_q8. Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K; others KERR_TYPE */
int cpu_matmul_q8(int type, const uint8_t *w, int64_t row_bytes, int64_t n, int64_t k, const uint8_t *xq,
                  int64_t t, float *y, int64_t ldy);
int cpu_matmul_q8_supported(int type);

#endif
