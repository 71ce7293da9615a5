// CUDA kernels: box_mix and its backward.
//
// Both are elementwise over one [B, C, H, W] tensor. Grid: y over samples b
// (the box and the weights of b are loaded once per thread and sample), x over
// chunks of VEC consecutive elements (memory order) of b's [C, H, W] slice.
// A chunk is one 128-bit load/store per tensor when the slice size, the
// strides and the pointers allow it (VEC = 16 / sizeof(scalar_t)), else
// VEC = 1. Each chunk's (c, y, x) comes from detail::split_slice_index for its
// first element and is stepped in memory order for the others, so one chunk
// may cross rows and channels (both layouts).
//
// To tune on a GPU: block size, several chunks per thread (more bytes in
// flight), keeping the M weights in registers for small fixed M.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

#include "../box_math.h"
#include "../op_args.h"
#include "cuda_utils.cuh"

namespace mixshare_ops {
namespace {

using detail::Box;

// out[b, k] = sum_i (scale * w_i(b, y, x)) * x[i, b, k] for k in b's slice.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(cuda::kThreads)
    box_mix_kernel(const scalar_t* __restrict__ src, int64_t stride_subnet, int64_t stride_batch,
                   const int32_t* __restrict__ boxes, const at::opmath_type<scalar_t>* __restrict__ w_in,
                   const at::opmath_type<scalar_t>* __restrict__ w_out, at::opmath_type<scalar_t> scale,
                   int64_t subnets, int64_t batch, int64_t channels, int64_t height, int64_t width, Layout layout,
                   scalar_t* __restrict__ out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t slice = channels * height * width, nvec = slice / VEC;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const Box box = detail::load_box(boxes, b, height, width);
    const scalar_t* src_b = src + b * stride_batch;
    scalar_t* out_b = out + b * slice;
    for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < nvec;
         v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t k0 = v * VEC;
      bool inside[VEC];
      {
        int64_t c, y, x;
        detail::split_slice_index(layout, k0, channels, height, width, c, y, x);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          inside[j] = box.contains(y, x);
          if (j + 1 < VEC) cuda::next_in_slice(layout, c, y, x, channels, height, width);
        }
      }
      opmath_t acc[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] = 0;
      for (int64_t i = 0; i < subnets; ++i) {
        // Same products as the CPU kernel: (scale * weight) * x.
        const opmath_t wi = scale * w_in[b * subnets + i];
        const opmath_t wo = scale * w_out[b * subnets + i];
        const auto xv = cuda::load_vec<VEC>(src_b + i * stride_subnet + k0);
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[j] += (inside[j] ? wi : wo) * static_cast<opmath_t>(xv.val[j]);
      }
      cuda::Vec<scalar_t, VEC> o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.val[j] = static_cast<scalar_t>(acc[j]);
      cuda::store_vec<VEC>(out_b + k0, o);
    }
  }
}

// grad_x[i, b, k] = (scale * w_i(b, y, x)) * grad_out[b, k]; grad_x is a fresh
// [M, B, C, H, W] tensor (slices in grad_out's layout), so its M stride is
// B * slice.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(cuda::kThreads)
    box_mix_backward_kernel(const scalar_t* __restrict__ grad, const int32_t* __restrict__ boxes,
                            const at::opmath_type<scalar_t>* __restrict__ w_in,
                            const at::opmath_type<scalar_t>* __restrict__ w_out, at::opmath_type<scalar_t> scale,
                            int64_t subnets, int64_t batch, int64_t channels, int64_t height, int64_t width,
                            Layout layout, scalar_t* __restrict__ grad_x) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t slice = channels * height * width, nvec = slice / VEC, stride_m = batch * slice;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const Box box = detail::load_box(boxes, b, height, width);
    const scalar_t* grad_b = grad + b * slice;
    scalar_t* out_b = grad_x + b * slice;
    for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < nvec;
         v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t k0 = v * VEC;
      bool inside[VEC];
      {
        int64_t c, y, x;
        detail::split_slice_index(layout, k0, channels, height, width, c, y, x);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          inside[j] = box.contains(y, x);
          if (j + 1 < VEC) cuda::next_in_slice(layout, c, y, x, channels, height, width);
        }
      }
      const auto gv = cuda::load_vec<VEC>(grad_b + k0);
      opmath_t g[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) g[j] = static_cast<opmath_t>(gv.val[j]);
      for (int64_t i = 0; i < subnets; ++i) {
        const opmath_t wi = scale * w_in[b * subnets + i];
        const opmath_t wo = scale * w_out[b * subnets + i];
        cuda::Vec<scalar_t, VEC> o;
#pragma unroll
        for (int j = 0; j < VEC; ++j) o.val[j] = static_cast<scalar_t>((inside[j] ? wi : wo) * g[j]);
        cuda::store_vec<VEC>(out_b + i * stride_m + k0, o);
      }
    }
  }
}

at::Tensor box_mix_cuda(const at::Tensor& x, const at::Tensor& boxes, const at::Tensor& inside_weight,
                        const at::Tensor& outside_weight, double scale) {
  const StackedArg in = stacked_arg(x, "x");
  check_scale(scale);
  const at::Tensor boxes_c = boxes_arg(boxes, x, "x", in.batch, in.height, in.width);
  const auto opmath = opmath_dtype(x.scalar_type());
  const at::Tensor w_in = weights_arg(inside_weight, "inside_weight", x, "x", in.batch, in.subnets, opmath);
  const at::Tensor w_out = weights_arg(outside_weight, "outside_weight", x, "x", in.batch, in.subnets, opmath);
  // The checks above put every tensor on x's device.
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = empty_features(in.batch, in.channels, in.height, in.width, in.layout, x.options());
  if (out.numel() == 0) return out;
  const int64_t M = in.subnets, B = in.batch, C = in.channels, H = in.height, W = in.width, slice = C * H * W;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "box_mix_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* src = in.data.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const auto launch = [&](auto vec) {
      constexpr int V = decltype(vec)::value;
      box_mix_kernel<scalar_t, V><<<cuda::sample_grid(slice / V, B), cuda::kThreads, 0, stream>>>(
          src, in.stride_subnet, in.stride_batch, boxes_c.const_data_ptr<int32_t>(), w_in.const_data_ptr<opmath_t>(),
          w_out.const_data_ptr<opmath_t>(), static_cast<opmath_t>(scale), M, B, C, H, W, in.layout, dst);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    constexpr int kVec = cuda::vec_size<scalar_t>();
    // Every chunk start (i * stride_subnet + b * stride_batch + k0) must be a
    // multiple of kVec; the batch stride is never used when B == 1.
    const bool vectorize = slice % kVec == 0 && in.stride_subnet % kVec == 0 &&
                           (B == 1 || in.stride_batch % kVec == 0) && cuda::is_aligned(src, 16) &&
                           cuda::is_aligned(dst, 16);
    if (vectorize) {
      launch(std::integral_constant<int, kVec>());
    } else {
      launch(std::integral_constant<int, 1>());
    }
  });
  return out;
}

at::Tensor box_mix_backward_cuda(const at::Tensor& grad_out, const at::Tensor& boxes,
                                 const at::Tensor& inside_weight, const at::Tensor& outside_weight, double scale) {
  const FeatureArg g = feature_arg(grad_out, "grad_out");
  check_scale(scale);
  const int64_t M = subnets_arg(inside_weight);
  const at::Tensor boxes_c = boxes_arg(boxes, grad_out, "grad_out", g.batch, g.height, g.width);
  const auto opmath = opmath_dtype(grad_out.scalar_type());
  const at::Tensor w_in = weights_arg(inside_weight, "inside_weight", grad_out, "grad_out", g.batch, M, opmath);
  const at::Tensor w_out = weights_arg(outside_weight, "outside_weight", grad_out, "grad_out", g.batch, M, opmath);
  const c10::cuda::CUDAGuard guard(grad_out.device());
  at::Tensor grad_x = empty_stacked(M, g.batch, g.channels, g.height, g.width, g.layout, grad_out.options());
  if (grad_x.numel() == 0) return grad_x;
  const int64_t B = g.batch, C = g.channels, H = g.height, W = g.width, slice = C * H * W;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "box_mix_backward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* src = g.data.const_data_ptr<scalar_t>();
    scalar_t* dst = grad_x.data_ptr<scalar_t>();
    const auto launch = [&](auto vec) {
      constexpr int V = decltype(vec)::value;
      box_mix_backward_kernel<scalar_t, V><<<cuda::sample_grid(slice / V, B), cuda::kThreads, 0, stream>>>(
          src, boxes_c.const_data_ptr<int32_t>(), w_in.const_data_ptr<opmath_t>(), w_out.const_data_ptr<opmath_t>(),
          static_cast<opmath_t>(scale), M, B, C, H, W, g.layout, dst);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    constexpr int kVec = cuda::vec_size<scalar_t>();
    if (slice % kVec == 0 && cuda::is_aligned(src, 16) && cuda::is_aligned(dst, 16)) {
      launch(std::integral_constant<int, kVec>());
    } else {
      launch(std::integral_constant<int, 1>());
    }
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(mixshare_ops, CUDA, m) {
  m.impl("box_mix", &box_mix_cuda);
  m.impl("box_mix_backward", &box_mix_backward_cuda);
}

}  // namespace mixshare_ops
