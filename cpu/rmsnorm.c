/* rmsnorm: out[t, d] = x[t, d] / sqrt(mean_d(x[t, d]^2) + eps) * w[d]
 * x, out [t, d] float32 (may alias), w [d] float32. The sum of squares accumulates in float32 in the
 * order NumPy's einsum does not guarantee either: both stay within ~1e-6 relative. One thread: a row of
 * a few thousand floats costs less than waking the team. Plain C; gcc vectorizes it at -O3. */
#include "common.h"
#include "kernels.h"

#include <math.h>

void cpu_rmsnorm(const float *x, const float *w, float eps, int64_t t, int64_t d, float *out) {
    for (int64_t r = 0; r < t; r++) {
        const float *xr = x + r * d;
        float *o = out + r * d;
        float ss = 0.0f;
        for (int64_t i = 0; i < d; i++) ss += xr[i] * xr[i];
        const float scale = 1.0f / sqrtf(ss / (float)d + eps);
        for (int64_t i = 0; i < d; i++) o[i] = xr[i] * scale * w[i];
    }
}
