/* Shared definitions of the native CPU kernels (the `cpu` backend): GGUF block layouts, half/bfloat
 * conversions, the SIMD level chosen at run time and the thread count.
 *
 * Every kernel file holds one operation: a scalar path that is the readable definition, and SIMD paths
 * (AVX2 + FMA + F16C, AVX-512 F/BW/VL/DQ, AVX-512 VNNI) compiled with per-function `target` attributes,
 * so one build runs on any x86-64 and picks the widest path the host supports (cpu_level()).
 * Weights are read in their GGUF block formats, straight from the memory-mapped file.
 */
#ifndef GGUF_SERVE_CPU_COMMON_H
#define GGUF_SERVE_CPU_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#define CPU_X86 1
#include <immintrin.h>
#else
#define CPU_X86 0
#endif

#define TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

/* ---- SIMD level -------------------------------------------------------------------------------- */

typedef enum { LEVEL_SCALAR = 0, LEVEL_AVX2 = 1, LEVEL_AVX512 = 2, LEVEL_VNNI = 3 } cpu_level_t;

cpu_level_t cpu_level(void);             /* the level kernels dispatch on (host's best unless forced) */
cpu_level_t cpu_host_level(void);        /* the best level this host supports */
int cpu_force_level(cpu_level_t level);  /* tests: 0 on success, -1 if the host lacks it */
const char *cpu_level_name(cpu_level_t level);

/* ---- threads ----------------------------------------------------------------------------------- */

int cpu_threads(void);      /* OpenMP team size every parallel kernel uses */
void cpu_set_threads(int n);

/* ---- GGML types (ids as in gguf-py's GGMLQuantizationType) ------------------------------------- */

enum {
    GGML_F32 = 0, GGML_F16 = 1, GGML_Q4_0 = 2, GGML_Q4_1 = 3, GGML_Q5_0 = 6, GGML_Q5_1 = 7,
    GGML_Q8_0 = 8, GGML_Q2_K = 10, GGML_Q3_K = 11, GGML_Q4_K = 12, GGML_Q5_K = 13, GGML_Q6_K = 14,
    GGML_BF16 = 30,
};

/* elements per block and bytes per block of a type; 0 when the type is not supported */
int ggml_block_elems(int type);
int ggml_block_bytes(int type);

#define QK 32     /* elements of a Q4_0 ... Q8_0 block */
#define QK_K 256  /* elements of a K-quant super-block */

typedef uint16_t ggml_half;

typedef struct { ggml_half d; uint8_t qs[QK / 2]; } block_q4_0;                 /* x = d * (q - 8) */
typedef struct { ggml_half d, m; uint8_t qs[QK / 2]; } block_q4_1;              /* x = d * q + m */
typedef struct { ggml_half d; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_0;  /* x = d * (q - 16) */
typedef struct { ggml_half d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_1;
typedef struct { ggml_half d; int8_t qs[QK]; } block_q8_0;                      /* x = d * q */
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; ggml_half d, dmin; } block_q2_K;
typedef struct { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; ggml_half d; } block_q3_K;
typedef struct { ggml_half d, dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } block_q4_K;
typedef struct { ggml_half d, dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_K;
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; ggml_half d; } block_q6_K;

_Static_assert(sizeof(block_q4_0) == 18, "Q4_0 block is 18 bytes");
_Static_assert(sizeof(block_q4_1) == 20, "Q4_1 block is 20 bytes");
_Static_assert(sizeof(block_q5_0) == 22, "Q5_0 block is 22 bytes");
_Static_assert(sizeof(block_q5_1) == 24, "Q5_1 block is 24 bytes");
_Static_assert(sizeof(block_q8_0) == 34, "Q8_0 block is 34 bytes");
_Static_assert(sizeof(block_q2_K) == 84, "Q2_K block is 84 bytes");
_Static_assert(sizeof(block_q3_K) == 110, "Q3_K block is 110 bytes");
_Static_assert(sizeof(block_q4_K) == 144, "Q4_K block is 144 bytes");
_Static_assert(sizeof(block_q5_K) == 176, "Q5_K block is 176 bytes");
_Static_assert(sizeof(block_q6_K) == 210, "Q6_K block is 210 bytes");

/* ---- half and bfloat16 ------------------------------------------------------------------------- */

static inline float fp32_from_bits(uint32_t w) { float f; memcpy(&f, &w, 4); return f; }
static inline uint32_t fp32_to_bits(float f) { uint32_t w; memcpy(&w, &f, 4); return w; }

/* IEEE half -> float, exact (subnormals, inf and NaN included) */
static inline float fp16_to_fp32(ggml_half h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return fp32_from_bits(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        float f = (float)man * (1.0f / 16777216.0f); /* man * 2^-24 */
        return sign ? -f : f;
    }
    return fp32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}

/* float -> IEEE half, round to nearest even (as NumPy's astype(float16)) */
static inline ggml_half fp32_to_fp16(float f) {
#if defined(__FLT16_MAX__)
    _Float16 h = (_Float16)f;
    ggml_half out; memcpy(&out, &h, 2); return out;
#else
#error "a compiler with _Float16 is needed (gcc >= 12 on x86-64)"
#endif
}

static inline float bf16_to_fp32(uint16_t b) { return fp32_from_bits((uint32_t)b << 16); }

#endif
