/* The packed int8 activations: written by quantize_q8.c, read by matmul_q8.c.
 *
 * A row of k floats (k a multiple of 32) is cut into blocks of 32 values, each with one float scale
 * d = max|x| / 127 and int8 q = round_half_even(x * (1 / d)) (x ≈ d q, |q| <= 127); blocks are packed 16 to a
 * group (512 values: one block per 32-bit lane of a zmm register, 8 per ymm). A group record holds
 * (768 bytes, every part 64-byte sized so a record starts at a cache line when the buffer does):
 *
 *   qs  [8 chunks][16 blocks][4] int8  byte c*64 + i*4 + j = q of element 4c + j of block i
 *   d   [16] float                     block scales
 *   s   [16] float                     d * sum(q) of each block (the offset and min terms of the weights)
 *   s16 [2][16] float                  d * sum(q) of each half block (elements 0..15, 16..31: Q6_K)
 *
 * so one 64-byte load of chunk c gives 4 consecutive values of 16 blocks, and a dot product accumulates
 * block b's integer sum in lane b without horizontal additions. Blocks past k in the last group are
 * zero (q = 0, d = 0, s = 0). Rows are ceil(k / 512) records, back to back; t rows back to back.
 */
#ifndef GGUF_SERVE_CPU_Q8_H
#define GGUF_SERVE_CPU_Q8_H

#include <stdint.h>

#define Q8_BLOCK 32          /* values per scale */
#define Q8_LANES 16          /* blocks per group */
#define Q8_GROUP 512         /* values per group */
#define Q8_GROUP_BYTES 768   /* bytes per group record */
#define Q8_OFF_D 512         /* byte offsets inside a record */
#define Q8_OFF_S 576
#define Q8_OFF_S16 640

static inline int64_t q8_groups(int64_t k) { return (k + Q8_GROUP - 1) / Q8_GROUP; }
static inline int64_t q8_row_bytes(int64_t k) { return q8_groups(k) * Q8_GROUP_BYTES; }

/* byte of value e (< k) of a row, counted from the row's start */
static inline int64_t q8_qs_offset(int64_t e) {
    const int64_t g = e / Q8_GROUP, i = e % Q8_GROUP / Q8_BLOCK, p = e % Q8_BLOCK;
    return g * Q8_GROUP_BYTES + (p / 4) * 64 + i * 4 + p % 4;
}

/* the float of block b (< k / 32) at record offset off (Q8_OFF_D or Q8_OFF_S; Q8_OFF_S16 + 64 * half) */
static inline float q8_block_float(const uint8_t *row, int64_t b, int off) {
    return ((const float *)(row + b / Q8_LANES * Q8_GROUP_BYTES + off))[b % Q8_LANES];
}

#endif
