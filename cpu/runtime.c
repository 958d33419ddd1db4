/* Run-time facts every kernel reads: the SIMD level (host's best, or one forced by a test), the thread
 * count of the OpenMP team, and the block sizes of each GGML type. */
#include "common.h"

#include <omp.h>

static int g_forced = -1; /* -1: use the host's best level */
static int g_threads = 0; /* 0: not set yet, omp_get_max_threads() */

cpu_level_t cpu_host_level(void) {
#if CPU_X86
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    if (avx512 && avx2 && __builtin_cpu_supports("avx512vnni")) return LEVEL_VNNI;
    if (avx512 && avx2) return LEVEL_AVX512;
    if (avx2) return LEVEL_AVX2;
#endif
    return LEVEL_SCALAR;
}

cpu_level_t cpu_level(void) { return g_forced >= 0 ? (cpu_level_t)g_forced : cpu_host_level(); }

int cpu_force_level(cpu_level_t level) {
    if ((int)level < 0) { g_forced = -1; return 0; }
    if (level > cpu_host_level()) return -1;
    g_forced = (int)level;
    return 0;
}

const char *cpu_level_name(cpu_level_t level) {
    static const char *names[] = {"scalar", "avx2", "avx512", "avx512vnni"};
    return (int)level >= 0 && level <= LEVEL_VNNI ? names[level] : "unknown";
}

int cpu_threads(void) { return g_threads > 0 ? g_threads : omp_get_max_threads(); }

void cpu_set_threads(int n) {
    g_threads = n > 0 ? n : 1;
    omp_set_num_threads(g_threads);
}

int ggml_block_elems(int type) {
    switch (type) {
    case GGML_F32: case GGML_F16: case GGML_BF16: return 1;
    case GGML_Q4_0: case GGML_Q4_1: case GGML_Q5_0: case GGML_Q5_1: case GGML_Q8_0: return QK;
    case GGML_Q2_K: case GGML_Q3_K: case GGML_Q4_K: case GGML_Q5_K: case GGML_Q6_K: return QK_K;
    default: return 0;
    }
}

int ggml_block_bytes(int type) {
    switch (type) {
    case GGML_F32: return 4;
    case GGML_F16: case GGML_BF16: return 2;
    case GGML_Q4_0: return sizeof(block_q4_0);
    case GGML_Q4_1: return sizeof(block_q4_1);
    case GGML_Q5_0: return sizeof(block_q5_0);
    case GGML_Q5_1: return sizeof(block_q5_1);
    case GGML_Q8_0: return sizeof(block_q8_0);
    case GGML_Q2_K: return sizeof(block_q2_K);
    case GGML_Q3_K: return sizeof(block_q3_K);
    case GGML_Q4_K: return sizeof(block_q4_K);
    case GGML_Q5_K: return sizeof(block_q5_K);
    case GGML_Q6_K: return sizeof(block_q6_K);
    default: return 0;
    }
}
