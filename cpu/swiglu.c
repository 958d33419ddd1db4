/* swiglu: out[t, f] = silu(g) * u with g = gate_up[t, f], u = gate_up[t, F + f], silu(g) = g / (1 + e^-g)
 * gate_up [t, 2F] float32 (gate rows then up rows of the fused weight), out [t, F] float32.
 * Rows are shared among the OpenMP team when the batch is large. */
#include "common.h"
#include "kernels.h"

#include <math.h>

void cpu_swiglu(const float *gate_up, int64_t t, int64_t f, float *out) {
#pragma omp parallel for schedule(static) num_threads(cpu_threads()) if (t * f >= 65536)
    for (int64_t r = 0; r < t; r++) {
        const float *g = gate_up + r * 2 * f, *u = g + f;
        float *o = out + r * f;
        for (int64_t i = 0; i < f; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}
