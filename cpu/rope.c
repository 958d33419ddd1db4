/* rope: rotary position embedding, in place, in two steps:
 *   rope_table: for token r and pair i < half, angle = pos[r] * inv_freq[i] in double, cos and sin rounded
 *     to float32 (as NumPy's reference does) into cs [t, 2, half] (cos row, then sin row). A forward
 *     computes it once: every layer's q and k rotate by the same angles (cos/sin in double cost ~20x
 *     the rotation itself: 16 decode tokens, 60 calls per forward, 140 -> ~10 us a call).
 *   rope: x [t, h, hd] float32, (a, b) -> (a cos - b sin, a sin + b cos) in float32, where
 *     neox:   a = x[r, :, i], b = x[r, :, i + half]   (halves of the rotary dims)
 *     normal: a = x[r, :, 2i], b = x[r, :, 2i + 1]   (adjacent pairs)
 * Only the first 2 * half dims rotate (partial rotary); the rest are left as they are.
 * Tokens are shared among the OpenMP team for prefill batches; a decode batch (a few tokens) stays on one
 * thread. Plain C: the float32 rotation has one product per term and no fused multiply-add on the
 * baseline target, so it rounds as NumPy's and the results agree with the reference to float32 rounding
 * of the angle's cos/sin (~1e-7 relative). */
#include "common.h"
#include "kernels.h"

#include <math.h>

void cpu_rope_table(const int32_t *pos, int64_t t, const float *inv_freq, int64_t half, float *cs) {
#pragma omp parallel for schedule(static) num_threads(cpu_threads()) if (t >= 16)
    for (int64_t r = 0; r < t; r++) {
        float *c = cs + r * 2 * half, *s = c + half;
        for (int64_t i = 0; i < half; i++) {
            const double angle = (double)pos[r] * (double)inv_freq[i];
            c[i] = (float)cos(angle);
            s[i] = (float)sin(angle);
        }
    }
}

static void rope_token(float *xr, int64_t h, int64_t hd, const float *c, const float *s, int64_t half,
                       int neox) {
    for (int64_t head = 0; head < h; head++) {
        float *x = xr + head * hd;
        if (neox) {
            for (int64_t i = 0; i < half; i++) {
                const float a = x[i], b = x[i + half];
                x[i] = a * c[i] - b * s[i];
                x[i + half] = a * s[i] + b * c[i];
            }
        } else {
            for (int64_t i = 0; i < half; i++) {
                const float a = x[2 * i], b = x[2 * i + 1];
                x[2 * i] = a * c[i] - b * s[i];
                x[2 * i + 1] = a * s[i] + b * c[i];
            }
        }
    }
}

void cpu_rope(float *x, int64_t t, int64_t h, int64_t hd, const float *cs, int64_t half, int neox) {
    if (t <= 0 || half <= 0) return;
#pragma omp parallel for schedule(static) num_threads(cpu_threads()) if (t * h >= 256)
    for (int64_t r = 0; r < t; r++) {
        const float *c = cs + r * 2 * half;
        rope_token(x + r * h * hd, h, hd, c, c + half, half, neox);
    }
}
