#include "common.cuh"
// swiglu: out[t, j] = silu(gate_up[t, j]) * gate_up[t, F + j], silu(g) = g / (1 + exp(-g))
//
// grid  (ceil(F / 256), T)   block (256)   thread (j, t) computes one output element
// shared memory        none
// dtypes               gate_up float32 [T, 2F]; out float32 [T, F]
// ptxas-budget: registers=24 threads=256

extern "C" __global__ void __launch_bounds__(256)
    swiglu_f32(const float* __restrict__ gate_up, float* __restrict__ out, int F) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
  if (j >= F) return;
  const float g = gate_up[size_t(t) * 2 * F + j], u = gate_up[size_t(t) * 2 * F + F + j];
  out[size_t(t) * F + j] = g / (1.0f + expf(-g)) * u;
}
