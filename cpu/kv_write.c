/* kv_write: k_cache[slots[i], :] = k[i, :] and v_cache[slots[i], :] = v[i, :] for i < t.
 * Caches are [num_blocks * block_size slots, row = n_kv * hd], float16 (f16 = 1, rounded to nearest
 * even as NumPy's astype) or float32; k, v [t, row] float32. Slots are checked by the module. */
#include "common.h"
#include "kernels.h"

void cpu_kv_write(void *k_cache, void *v_cache, int f16, const float *k, const float *v,
                  const int32_t *slots, int64_t t, int64_t row) {
    for (int64_t i = 0; i < t; i++) {
        const int64_t s = slots[i];
        if (f16) {
            ggml_half *kd = (ggml_half *)k_cache + s * row, *vd = (ggml_half *)v_cache + s * row;
            for (int64_t j = 0; j < row; j++) {
                kd[j] = fp32_to_fp16(k[i * row + j]);
                vd[j] = fp32_to_fp16(v[i * row + j]);
            }
        } else {
            memcpy((float *)k_cache + s * row, k + i * row, row * sizeof(float));
            memcpy((float *)v_cache + s * row, v + i * row, row * sizeof(float));
        }
    }
}
