#include "common.cuh"
// attention_prefill_f32: causal attention of a packed batch of sequences over the paged KV cache,
// FlashAttention style (one pass over the keys, online softmax, nothing of size T x T is stored).
//
// grid  (ceil(max_query_len / 4), H, n_seqs)   block (32, 4): warp w owns query row 4 * blockIdx.x + w of
//        head blockIdx.y of sequence blockIdx.z (rows past the sequence's query_len only help load tiles)
// per tile of 32 keys: the block stages K and V rows (kv head h / (H / n_kv)) in shared memory; lane j
// scores key j against the warp's query (stored in shared memory), the warp updates its running max m,
// denominator l and output accumulator (lane owns dims lane, lane + 32, ... < hd <= 128)
// shared memory        dynamic: (32 * (hd + 1) + 32 * hd + 4 * hd + 4 * 32) * 4 bytes (hd = 64: 17.9 KB)
// dtypes               q float32, token t's heads at q + t * q_stride (H * hd, or more inside a fused qkv);
//                      out float32 [T, H, hd]; caches float32 [num_blocks * block_size, n_kv, hd];
//                      seq_info int32 [n_seqs, 4] = (query_start, query_len, context_len, block_table_start);
//                      block_tables int32 (all tables, concatenated); window 0 = full causal attention
// the queries of a sequence are its last query_len positions; query i sees key p iff
//   p <= pos_i and (window == 0 or p > pos_i - window), pos_i = context_len - query_len + i
// ptxas-budget: registers=64 threads=128

#define AP_WARPS 4
#define AP_TILE 32
#define AP_MAX_HD 128

extern "C" __global__ void __launch_bounds__(128)
    attention_prefill_f32(const float* __restrict__ q, const float* __restrict__ k_cache,
                          const float* __restrict__ v_cache, float* __restrict__ out,
                          const int* __restrict__ seq_info, const int* __restrict__ block_tables, int H, int n_kv,
                          int hd, int block_size, int window, float scale, int q_stride) {
  CUDA_DYN_SMEM(float, smem);
  float* Ks = smem;                            // [32][hd + 1]
  float* Vs = Ks + AP_TILE * (hd + 1);         // [32][hd]
  float* Qs = Vs + AP_TILE * hd;               // [4][hd]
  float* Ps = Qs + AP_WARPS * hd;              // [4][32]
  const int* info = seq_info + 4 * blockIdx.z;
  const int query_start = info[0], query_len = info[1], context_len = info[2];
  const int* table = block_tables + info[3];
  const int h = blockIdx.y, kvh = h / (H / n_kv);
  const int lane = threadIdx.x, w = threadIdx.y, tid = w * 32 + lane;
  const int first = blockIdx.x * AP_WARPS;
  if (first >= query_len) return;  // uniform over the block, before any barrier
  const int last = min(query_len - 1, first + AP_WARPS - 1);
  const int qi = first + w;
  const bool valid = qi < query_len;
  const int pos = context_len - query_len + qi;
  const int kv_end = context_len - query_len + last + 1;  // keys [kv_begin, kv_end) matter to this block
  const int kv_begin = window > 0 ? max(0, context_len - query_len + first - window + 1) : 0;

  const float* qrow = q + size_t(query_start + (valid ? qi : first)) * q_stride + size_t(h) * hd;
  for (int d = lane; d < hd; d += 32) Qs[w * hd + d] = qrow[d];
  float m = -INFINITY, l = 0.0f, acc[AP_MAX_HD / 32];
#pragma unroll
  for (int i = 0; i < AP_MAX_HD / 32; ++i) acc[i] = 0.0f;

  for (int j0 = kv_begin; j0 < kv_end; j0 += AP_TILE) {
    for (int idx = tid; idx < AP_TILE * hd; idx += AP_WARPS * 32) {
      const int key = idx / hd, d = idx % hd, p = j0 + key;
      float kv = 0.0f, vv = 0.0f;
      if (p < kv_end) {
        const size_t slot = size_t(table[p / block_size]) * block_size + p % block_size;
        kv = k_cache[(slot * n_kv + kvh) * hd + d];
        vv = v_cache[(slot * n_kv + kvh) * hd + d];
      }
      Ks[key * (hd + 1) + d] = kv;
      Vs[key * hd + d] = vv;
    }
    __syncthreads();
    const int p = j0 + lane;
    float s = 0.0f;
    for (int d = 0; d < hd; ++d) s += Qs[w * hd + d] * Ks[lane * (hd + 1) + d];
    const bool masked = !valid || p >= kv_end || p > pos || (window > 0 && p <= pos - window);
    s = masked ? -INFINITY : s * scale;
    const float m_new = fmaxf(m, warp_max(s));
    if (m_new != -INFINITY) {  // warp-uniform: nothing visible yet means nothing to add
      const float pj = masked ? 0.0f : expf(s - m_new);
      const float alpha = expf(m - m_new);
      l = l * alpha + warp_sum(pj);
      Ps[w * 32 + lane] = pj;
      __syncwarp(FULL_MASK);
#pragma unroll
      for (int i = 0; i < AP_MAX_HD / 32; ++i) {
        const int d = lane + 32 * i;
        if (d < hd) {
          float a = acc[i] * alpha;
          for (int j = 0; j < AP_TILE; ++j) a += Ps[w * 32 + j] * Vs[j * hd + d];
          acc[i] = a;
        }
      }
      __syncwarp(FULL_MASK);
      m = m_new;
    }
    __syncthreads();  // the next tile overwrites Ks / Vs
  }
  if (valid) {
    float* orow = out + (size_t(query_start + qi) * H + h) * hd;
#pragma unroll
    for (int i = 0; i < AP_MAX_HD / 32; ++i)
      if (lane + 32 * i < hd) orow[lane + 32 * i] = acc[i] / l;
  }
}
