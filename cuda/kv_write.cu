#include "common.cuh"
// kv_write: k_cache[slot[t]] = k[t], v_cache[slot[t]] = v[t]   (append new keys/values to the paged cache)
//
// grid  (T)            one block per new token; a negative slot (padding) writes nothing
// block (128)          thread i copies elements i, i + 128, ... of the n_kv * hd floats of k and of v
// shared memory        none
// dtypes               caches float32 [num_blocks * block_size, n_kv, hd] (slot = block * block_size + offset);
//                      k, v float32: token t's n_kv * hd values at k + t * src_stride (src_stride = row for
//                      contiguous [T, n_kv, hd]; larger when k and v are views into a fused qkv); slots int32 [T]
// ptxas-budget: registers=24 threads=128

extern "C" __global__ void __launch_bounds__(128)
    kv_write_f32(float* __restrict__ k_cache, float* __restrict__ v_cache, const float* __restrict__ k,
                 const float* __restrict__ v, const int* __restrict__ slots, int row, int src_stride) {
  const int t = blockIdx.x, slot = slots[t];
  if (slot < 0) return;
  const float* ks = k + size_t(t) * src_stride;
  const float* vs = v + size_t(t) * src_stride;
  float* kd = k_cache + size_t(slot) * row;
  float* vd = v_cache + size_t(slot) * row;
  for (int i = threadIdx.x; i < row; i += blockDim.x) {
    kd[i] = ks[i];
    vd[i] = vs[i];
  }
}
