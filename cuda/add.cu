#include "common.cuh"
// add: x += y (the residual connection), elementwise over n floats
//
// grid  (ceil(n / 256), capped by the launcher)   block (256)   grid-stride loop
// shared memory        none
// dtypes               x, y float32 [n]
// ptxas-budget: registers=16 threads=256

extern "C" __global__ void __launch_bounds__(256) add_f32(float* __restrict__ x, const float* __restrict__ y, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) x[i] += y[i];
}
