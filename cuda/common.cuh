// Shared by every kernel: the CUDA/emulator switch, dynamic shared memory, warp and block reductions.
//
// Under nvcc this pulls in cuda_fp16.h; under g++ (tests, CI without a GPU) it pulls in the emulation
// header tests/kernels/emu/cuda_emu.hpp, which defines the same names on the host.
#pragma once

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#include <stdint.h>
// Dynamic shared memory, sized by the launch's `shared=` bytes; 16-byte aligned so float4 works.
#define CUDA_DYN_SMEM(T, name) extern __shared__ __align__(16) T name[]
#else
#include "cuda_emu.hpp"
#endif

#define FULL_MASK 0xffffffffu

// Sum over the 32 lanes of a full warp; every lane gets the total.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
  return v;
}

// Maximum over the 32 lanes of a full warp; every lane gets it.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
  return v;
}

// Sum over a 1-D block whose size is a multiple of 32 (<= 1024); every thread gets the total.
// `scratch` is __shared__ float[32] owned by the caller. The whole block must call it (two barriers).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = lane < nwarps ? scratch[lane] : 0.0f;
  total = warp_sum(total);
  __syncthreads();  // scratch may be reused by the caller right after
  return total;
}

// Round-to-nearest multiply that nvcc may not contract into an FMA: keeps dequantization bit-exact
// with gguf.quants.dequantize (which multiplies, then adds, in float32).
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
