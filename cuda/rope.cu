#include "common.cuh"
// rope: rotary position embedding, in place, over the first rope_dim = 2 * half dims of every head
//   style 0 "normal" (llama.cpp LLAMA): pairs (x[2i], x[2i+1]);  style 1 "neox": pairs (x[i], x[i + half])
//   angle = positions[t] * inv_freq[i];  (a, b) -> (a cos - b sin, a sin + b cos)
//
// grid  (T)            one block per token
// block (128)          thread p handles pairs p, p + 128, ... of the H * half pairs of the token
// shared memory        none
// dtypes               x float32, token t's heads at x + t * row_stride ([T, H, hd] when row_stride = H * hd;
//                      larger strides rotate q or k in place inside a fused [T, q|k|v] projection);
//                      positions int32 [T]; inv_freq float32 [half]
// precision            the angle is reduced modulo 2*pi in double (positions reach 32k, where a float32 angle
//                      is off by ~2e-3 rad), then __sincosf on [-pi, pi] (abs error ~1e-6)
// ptxas-budget: registers=40 threads=128

extern "C" __global__ void __launch_bounds__(128)
    rope_f32(float* __restrict__ x, const int* __restrict__ positions, const float* __restrict__ inv_freq, int H,
             int hd, int half, int neox, int row_stride) {
  const int t = blockIdx.x;
  const double pos = double(positions[t]);
  float* xt = x + size_t(t) * row_stride;
  for (int p = threadIdx.x; p < H * half; p += blockDim.x) {
    const int h = p / half, i = p % half;
    const double angle = pos * double(inv_freq[i]);
    const double two_pi = 6.283185307179586;
    const float r = float(angle - two_pi * rint(angle / two_pi));
    float s, c;
    __sincosf(r, &s, &c);
    float* xh = xt + size_t(h) * hd;
    const int ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
    const float a = xh[ia], b = xh[ib];
    xh[ia] = a * c - b * s;
    xh[ib] = a * s + b * c;
  }
}
