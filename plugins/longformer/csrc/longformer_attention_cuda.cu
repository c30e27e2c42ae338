// CUDA kernel for the local + global-key part of tfopt_longformer::attention (see longformer_attention.cpp).
//
// UNTESTED ON A GPU: no development machine of this project has one. It is compiled into the
// extension only when torch has CUDA; tests/test_longformer_cuda_source.py compiles this file
// with nvcc (compile-only) where nvcc exists. Its numerics have never been compared with the
// CPU kernel.
//
// One thread block per (batch, head, query) row. Slots 0..G-1 are the batch's global tokens,
// slots G..G+2w are the window i-w..i+w; a slot that is filler, out of range, padding or a
// global token inside the window scores -inf. Two block reductions (max, sum), then each
// thread accumulates some of the D output features. Shared memory: D + G + 2w + 1 floats.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace tfopt_longformer_cuda {

constexpr int kThreads = 128;

__device__ float block_reduce(float value, float* scratch, bool is_max) {
  const int tid = threadIdx.x;
  scratch[tid] = value;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (tid < stride) scratch[tid] = is_max ? fmaxf(scratch[tid], scratch[tid + stride]) : scratch[tid] + scratch[tid + stride];
    __syncthreads();
  }
  const float result = scratch[0];
  __syncthreads();
  return result;
}

__global__ void local_rows_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                                  float* __restrict__ out, const bool* __restrict__ key_ok,
                                  const int64_t* __restrict__ gidx, const bool* __restrict__ gval,
                                  int64_t H, int64_t S, int64_t D, int64_t G, int64_t w) {
  extern __shared__ float smem[];
  float* qi = smem;                 // D
  float* score = smem + D;          // G + 2w + 1
  float* scratch = score + G + 2 * w + 1;  // kThreads
  const int64_t row = blockIdx.x;
  const int64_t b = row / (H * S), h = (row / S) % H, i = row % S;
  const float* kbase = k + (b * H + h) * S * D;
  const float* vbase = v + (b * H + h) * S * D;
  const int64_t slots = G + 2 * w + 1;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) qi[d] = q[row * D + d];
  __syncthreads();
  float local_max = -INFINITY;
  for (int64_t m = threadIdx.x; m < slots; m += blockDim.x) {
    int64_t j = -1;
    if (m < G) {
      if (gval[b * G + m]) j = gidx[b * G + m];
    } else {
      const int64_t candidate = i - w + (m - G);
      if (candidate >= 0 && candidate < S && key_ok[b * S + candidate]) j = candidate;
    }
    float s = -INFINITY;
    if (j >= 0) {
      s = 0.f;
      for (int64_t d = 0; d < D; ++d) s += qi[d] * kbase[j * D + d];
    }
    score[m] = s;
    local_max = fmaxf(local_max, s);
  }
  const float best = block_reduce(local_max, scratch, true);
  float local_sum = 0.f;
  for (int64_t m = threadIdx.x; m < slots; m += blockDim.x) {
    const float e = score[m] == -INFINITY ? 0.f : __expf(score[m] - best);
    score[m] = e;
    local_sum += e;
  }
  const float total = block_reduce(local_sum, scratch, false);
  const float inv = total > 0.f ? 1.f / total : 0.f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.f;
    for (int64_t m = 0; m < slots; ++m) {
      const float p = score[m];
      if (p == 0.f) continue;
      const int64_t j = m < G ? gidx[b * G + m] : i - w + (m - G);
      acc += p * vbase[j * D + d];
    }
    out[row * D + d] = acc * inv;
  }
}

// q, k, v, out: (B, H, S, D) contiguous float32 on the device; key_ok (B, S); gidx, gval (B, G).
cudaError_t launch_local_attention(const float* q, const float* k, const float* v, float* out, const bool* key_ok,
                                   const int64_t* gidx, const bool* gval, int64_t B, int64_t H, int64_t S,
                                   int64_t D, int64_t G, int64_t w, cudaStream_t stream) {
  const int64_t rows = B * H * S;
  if (rows == 0) return cudaSuccess;
  const size_t shared = sizeof(float) * static_cast<size_t>(D + G + 2 * w + 1 + kThreads);
  local_rows_kernel<<<static_cast<unsigned>(rows), kThreads, shared, stream>>>(q, k, v, out, key_ok, gidx, gval, H, S, D, G, w);
  return cudaGetLastError();
}

}  // namespace tfopt_longformer_cuda

#ifndef TFOPT_KERNEL_ONLY
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

// Called by longformer_attention.cpp for CUDA tensors (compiled with -DTFOPT_WITH_CUDA).
at::Tensor tfopt_local_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_ok,
                            const at::Tensor& gidx, const at::Tensor& gval, int64_t w) {
  auto out = at::empty_like(q);
  auto ok = key_ok.to(at::kBool).contiguous();
  auto index = gidx.contiguous();
  auto valid = gval.to(at::kBool).contiguous();
  const auto err = tfopt_longformer_cuda::launch_local_attention(
      q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), out.data_ptr<float>(), ok.data_ptr<bool>(),
      index.data_ptr<int64_t>(), valid.data_ptr<bool>(), q.size(0), q.size(1), q.size(2), q.size(3), index.size(1), w,
      c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "tfopt_longformer CUDA kernel failed: ", cudaGetErrorString(err));
  return out;
}
#endif
