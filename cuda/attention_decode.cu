#include "common.cuh"
// Decode attention (query_len == 1 for every sequence), split along the context (flash-decoding):
//
// attention_decode_split_f32
//   grid  (n_splits, H, n_seqs)   block (32, nw), nw <= 4 warps (the launcher takes 4 for hd <= 80, else 2)
//   split s covers keys [s * split_len, min((s + 1) * split_len, context_len)) (intersected with the sliding
//   window); warp w takes tiles of 32 keys w, w + nw, ... of the split: it stages the tile's K rows in its
//   own shared slice, lane j scores key j, and the warp keeps a running max m, denominator l and
//   unnormalised output (lane owns dims lane, lane + 32, ... < hd <= 128; V is read straight from global
//   memory, coalesced along hd). The warps then merge through shared memory and warp 0 writes the
//   split's (m, l) and accumulator.
//   shared memory  dynamic: nw * (32 * (hd + 1) + hd + 32 + 2 + 32) * 4 bytes
//                  (hd = 64, nw = 4: 34.8 KB; hd = 128, nw = 2: 34.6 KB)
// attention_decode_combine_f32
//   grid  (H, n_seqs)   block (32): out = sum_s acc_s * exp(m_s - M) / sum_s l_s * exp(m_s - M)
//   shared memory  none
// dtypes  q float32, token t's heads at q + t * q_stride; out float32 [T, H, hd] (row query_start of each
//         sequence); caches float32
//         [num_blocks * block_size, n_kv, hd]; seq_info int32 [n_seqs, 4] = (query_start, query_len == 1,
//         context_len, block_table_start); block_tables int32; part_ml float32 [n_seqs, H, n_splits, 2];
//         part_acc float32 [n_seqs, H, n_splits, hd]
// ptxas-budget: registers=64 threads=128
// ptxas-budget[attention_decode_combine_f32]: registers=56 threads=32

#define AD_TILE 32
#define AD_MAX_HD 128

extern "C" __global__ void __launch_bounds__(128)
    attention_decode_split_f32(const float* __restrict__ q, const float* __restrict__ k_cache,
                               const float* __restrict__ v_cache, float* __restrict__ part_ml,
                               float* __restrict__ part_acc, const int* __restrict__ seq_info,
                               const int* __restrict__ block_tables, int H, int n_kv, int hd, int block_size,
                               int window, float scale, int split_len, int q_stride) {
  CUDA_DYN_SMEM(float, smem);
  const int lane = threadIdx.x, w = threadIdx.y, nw = blockDim.y;
  float* Ks = smem + w * AD_TILE * (hd + 1);                // [nw][32][hd + 1]
  float* Acc = smem + nw * AD_TILE * (hd + 1);        // [nw][hd]
  float* Ps = Acc + nw * hd;                           // [nw][32]
  float* ML = Ps + nw * 32;                            // [nw][2]
  int* Slots = reinterpret_cast<int*>(ML + 2 * nw) + w * AD_TILE;  // [nw][32] cache slot of each key
  const int* info = seq_info + 4 * blockIdx.z;
  const int query_row = info[0], context_len = info[2];
  const int* table = block_tables + info[3];
  const int h = blockIdx.y, kvh = h / (H / n_kv), split = blockIdx.x, n_splits = gridDim.x;
  const int pos = context_len - 1;
  const int lo = max(split * split_len, window > 0 ? pos - window + 1 : 0);
  const int hi = min((split + 1) * split_len, context_len);
  const float* qrow = q + size_t(query_row) * q_stride + size_t(h) * hd;
  float* Qs = Acc + w * hd;  // the warp's query, reused below as its accumulator slot
  for (int d = lane; d < hd; d += 32) Qs[d] = qrow[d];
  __syncwarp(FULL_MASK);

  float m = -INFINITY, l = 0.0f, acc[AD_MAX_HD / 32];
#pragma unroll
  for (int i = 0; i < AD_MAX_HD / 32; ++i) acc[i] = 0.0f;
  for (int j0 = lo + w * AD_TILE; j0 < hi; j0 += nw * AD_TILE) {
    const int p = j0 + lane;
    const bool masked = p >= hi;
    Slots[lane] = masked ? -1 : table[p / block_size] * block_size + p % block_size;
    __syncwarp(FULL_MASK);
    for (int idx = lane; idx < AD_TILE * hd; idx += 32) {
      const int key = idx / hd, d = idx % hd, slot = Slots[key];
      Ks[key * (hd + 1) + d] = slot < 0 ? 0.0f : k_cache[(size_t(slot) * n_kv + kvh) * hd + d];
    }
    __syncwarp(FULL_MASK);
    float s = 0.0f;
    for (int d = 0; d < hd; ++d) s += Qs[d] * Ks[lane * (hd + 1) + d];
    s = masked ? -INFINITY : s * scale;
    const float m_new = fmaxf(m, warp_max(s));  // finite: key j0 < hi is always visible
    const float pj = masked ? 0.0f : expf(s - m_new);
    const float alpha = expf(m - m_new);
    l = l * alpha + warp_sum(pj);
    Ps[w * 32 + lane] = pj;
    __syncwarp(FULL_MASK);
    const int nk = min(AD_TILE, hi - j0);
#pragma unroll
    for (int i = 0; i < AD_MAX_HD / 32; ++i) acc[i] *= alpha;
    for (int j = 0; j < nk; ++j) {
      const float pj_ = Ps[w * 32 + j];
      const float* vrow = v_cache + (size_t(Slots[j]) * n_kv + kvh) * hd;
#pragma unroll
      for (int i = 0; i < AD_MAX_HD / 32; ++i)
        if (lane + 32 * i < hd) acc[i] += pj_ * vrow[lane + 32 * i];
    }
    __syncwarp(FULL_MASK);  // Ks and Ps are rewritten by the next tile
    m = m_new;
  }
  // merge the warps: every warp publishes (m, l, acc), warp 0 combines
#pragma unroll
  for (int i = 0; i < AD_MAX_HD / 32; ++i)
    if (lane + 32 * i < hd) Qs[lane + 32 * i] = acc[i];
  if (lane == 0) {
    ML[2 * w] = m;
    ML[2 * w + 1] = l;
  }
  __syncthreads();
  if (w == 0) {
    float M = -INFINITY;
    for (int v = 0; v < nw; ++v) M = fmaxf(M, ML[2 * v]);
    const size_t part = (size_t(blockIdx.z) * H + h) * n_splits + split;
    float L = 0.0f;
    for (int v = 0; v < nw; ++v) L += M == -INFINITY ? 0.0f : ML[2 * v + 1] * expf(ML[2 * v] - M);
    for (int d = lane; d < hd; d += 32) {
      float a = 0.0f;
      for (int v = 0; v < nw; ++v) a += M == -INFINITY ? 0.0f : Acc[v * hd + d] * expf(ML[2 * v] - M);
      part_acc[part * hd + d] = a;
    }
    if (lane == 0) {
      part_ml[2 * part] = M;
      part_ml[2 * part + 1] = L;
    }
  }
}

extern "C" __global__ void __launch_bounds__(32)
    attention_decode_combine_f32(const float* __restrict__ part_ml, const float* __restrict__ part_acc,
                                 float* __restrict__ out, const int* __restrict__ seq_info, int H, int hd,
                                 int n_splits) {
  const int h = blockIdx.x, s = blockIdx.y, lane = threadIdx.x;
  const size_t base = (size_t(s) * H + h) * n_splits;
  float M = -INFINITY;
  for (int k = 0; k < n_splits; ++k) M = fmaxf(M, part_ml[2 * (base + k)]);
  float L = 0.0f;
  for (int k = 0; k < n_splits; ++k) {
    const float mk = part_ml[2 * (base + k)];
    if (mk != -INFINITY) L += part_ml[2 * (base + k) + 1] * expf(mk - M);
  }
  float* orow = out + (size_t(seq_info[4 * s]) * H + h) * hd;
  for (int d = lane; d < hd; d += 32) {
    float a = 0.0f;
    for (int k = 0; k < n_splits; ++k) {
      const float mk = part_ml[2 * (base + k)];
      if (mk != -INFINITY) a += part_acc[(base + k) * hd + d] * expf(mk - M);
    }
    orow[d] = a / L;
  }
}
