// CUDA kernels: cutmix_unmix and its backward.
//
// First a small kernel tabulates the applied masks [M, B, h * w] (see
// unmix_masks.cuh); then an elementwise kernel runs over the [B, C, h, w]
// side. Grid: y over samples b, x over chunks of VEC consecutive elements
// (memory order) of b's [C, h, w] slice: one 128-bit access per tensor and
// chunk when the slice size, strides and pointers allow it (VEC =
// 16 / sizeof(scalar_t)), else VEC = 1. A chunk's (c, y, x) comes from
// detail::split_slice_index for its first element; cuda::Chunk then reads
// the chunk's masks with one vector load (NCHW, h * w % VEC == 0), one scalar
// load (channels_last, C % VEC == 0), or per element otherwise.
//
// To tune on a GPU: block size, several chunks per thread, staging a sample's
// masks in shared memory when h * w is small.
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
#include "unmix_masks.cuh"

namespace mixshare_ops {
namespace {

// out[i, b, k] = features[b, k] * mask_i(b, y, x) for c < channels, else
// features[b, k]. out is a fresh [M, B, C, h, w] tensor (slices in the
// features' layout), so its M stride is B * slice.
template <typename scalar_t, int VEC, cuda::ChunkKind KIND>
__global__ void __launch_bounds__(cuda::kThreads)
    cutmix_unmix_kernel(const scalar_t* __restrict__ src, const at::opmath_type<scalar_t>* __restrict__ masks,
                        int64_t subnets, int64_t batch, int64_t num_channels, int64_t h, int64_t w,
                        int64_t channels, Layout layout, scalar_t* __restrict__ out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t cells = h * w, slice = num_channels * cells, nvec = slice / VEC, stride_m = batch * slice;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const scalar_t* src_b = src + b * slice;
    scalar_t* out_b = out + b * slice;
    for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < nvec;
         v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t k0 = v * VEC;
      const cuda::Chunk<VEC, KIND> chunk(layout, k0, num_channels, h, w);
      bool unmixed[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) unmixed[j] = chunk.channel(j) < channels;
      const auto fv = cuda::load_vec<VEC>(src_b + k0);
      for (int64_t i = 0; i < subnets; ++i) {
        opmath_t m[VEC];
        chunk.gather_cells(masks + (i * batch + b) * cells, unmixed, m);
        cuda::Vec<scalar_t, VEC> o;
#pragma unroll
        for (int j = 0; j < VEC; ++j)
          o.val[j] = unmixed[j] ? static_cast<scalar_t>(static_cast<opmath_t>(fv.val[j]) * m[j]) : fv.val[j];
        cuda::store_vec<VEC>(out_b + i * stride_m + k0, o);
      }
    }
  }
}

// grad_f[b, k] = sum_i grad_out[i, b, k] * (c < channels ? mask_i(b, y, x) : 1),
// with grad_out's M and B strides arbitrary.
template <typename scalar_t, int VEC, cuda::ChunkKind KIND>
__global__ void __launch_bounds__(cuda::kThreads)
    cutmix_unmix_backward_kernel(const scalar_t* __restrict__ grad, int64_t stride_subnet, int64_t stride_batch,
                                 const at::opmath_type<scalar_t>* __restrict__ masks, int64_t subnets, int64_t batch,
                                 int64_t num_channels, int64_t h, int64_t w, int64_t channels, Layout layout,
                                 scalar_t* __restrict__ grad_f) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t cells = h * w, slice = num_channels * cells, nvec = slice / VEC;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const scalar_t* grad_b = grad + b * stride_batch;
    scalar_t* out_b = grad_f + b * slice;
    for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < nvec;
         v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t k0 = v * VEC;
      const cuda::Chunk<VEC, KIND> chunk(layout, k0, num_channels, h, w);
      bool unmixed[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) unmixed[j] = chunk.channel(j) < channels;
      opmath_t acc[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] = 0;
      for (int64_t i = 0; i < subnets; ++i) {
        opmath_t m[VEC];
        chunk.gather_cells(masks + (i * batch + b) * cells, unmixed, m);
        const auto gv = cuda::load_vec<VEC>(grad_b + i * stride_subnet + k0);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const opmath_t g = static_cast<opmath_t>(gv.val[j]);
          acc[j] += unmixed[j] ? g * m[j] : g;
        }
      }
      cuda::Vec<scalar_t, VEC> o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.val[j] = static_cast<scalar_t>(acc[j]);
      cuda::store_vec<VEC>(out_b + k0, o);
    }
  }
}

at::Tensor cutmix_unmix_cuda(const at::Tensor& features, const at::Tensor& boxes,
                             const std::optional<at::Tensor>& inside_weight,
                             const std::optional<at::Tensor>& outside_weight, int64_t box_height, int64_t box_width,
                             double ratio, int64_t channels) {
  const FeatureArg f = feature_arg(features, "features");
  check_unmix_scalars(box_height, box_width, f.height, f.width, ratio, channels, f.channels);
  const at::Tensor boxes_c = boxes_arg(boxes, features, "features", f.batch, box_height, box_width);
  const UnmixWeights wts = unmix_weights_arg(inside_weight, outside_weight, features, "features", f.batch,
                                             opmath_dtype(features.scalar_type()));
  const int64_t M = wts.subnets, B = f.batch, C = f.channels, h = f.height, w = f.width, slice = C * h * w;
  // The checks above put every tensor on the features' device.
  const c10::cuda::CUDAGuard guard(features.device());
  at::Tensor out = empty_stacked(M, B, C, h, w, f.layout, features.options());
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "cutmix_unmix_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor masks = cuda::unmix_mask_table<opmath_t>(boxes_c, wts, B, box_height, box_width, h, w,
                                                              static_cast<opmath_t>(ratio), stream);
    const scalar_t* src = f.data.const_data_ptr<scalar_t>();
    const opmath_t* masks_p = masks.const_data_ptr<opmath_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    constexpr int kVec = cuda::vec_size<scalar_t>();
    const bool vectorize = slice % kVec == 0 && cuda::is_aligned(src, 16) && cuda::is_aligned(dst, 16) &&
                           cuda::is_aligned(masks_p, kVec * sizeof(opmath_t));
    cuda::dispatch_chunk<kVec>(vectorize, f.layout, C, h * w, [&](auto vec, auto kind) {
      constexpr int V = decltype(vec)::value;
      constexpr cuda::ChunkKind K = decltype(kind)::value;
      cutmix_unmix_kernel<scalar_t, V, K><<<cuda::sample_grid(slice / V, B), cuda::kThreads, 0, stream>>>(
          src, masks_p, M, B, C, h, w, channels, f.layout, dst);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor cutmix_unmix_backward_cuda(const at::Tensor& grad_out, const at::Tensor& boxes,
                                      const std::optional<at::Tensor>& inside_weight,
                                      const std::optional<at::Tensor>& outside_weight, int64_t box_height,
                                      int64_t box_width, double ratio, int64_t channels) {
  const StackedArg g = stacked_arg(grad_out, "grad_out");
  check_unmix_scalars(box_height, box_width, g.height, g.width, ratio, channels, g.channels);
  const at::Tensor boxes_c = boxes_arg(boxes, grad_out, "grad_out", g.batch, box_height, box_width);
  const UnmixWeights wts = unmix_weights_arg(inside_weight, outside_weight, grad_out, "grad_out", g.batch,
                                             opmath_dtype(grad_out.scalar_type()));
  TORCH_CHECK_VALUE(wts.subnets == g.subnets, "grad_out must have M = ", wts.subnets,
              " (from the weights) along dim 0, got ", g.subnets);
  const int64_t M = g.subnets, B = g.batch, C = g.channels, h = g.height, w = g.width, slice = C * h * w;
  const c10::cuda::CUDAGuard guard(grad_out.device());
  at::Tensor grad_f = empty_features(B, C, h, w, g.layout, grad_out.options());
  if (grad_f.numel() == 0) return grad_f;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "cutmix_unmix_backward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor masks = cuda::unmix_mask_table<opmath_t>(boxes_c, wts, B, box_height, box_width, h, w,
                                                              static_cast<opmath_t>(ratio), stream);
    const scalar_t* src = g.data.const_data_ptr<scalar_t>();
    const opmath_t* masks_p = masks.const_data_ptr<opmath_t>();
    scalar_t* dst = grad_f.data_ptr<scalar_t>();
    constexpr int kVec = cuda::vec_size<scalar_t>();
    // Every chunk start (i * stride_subnet + b * stride_batch + k0) must be a
    // multiple of kVec; the batch stride is never used when B == 1.
    const bool vectorize = slice % kVec == 0 && g.stride_subnet % kVec == 0 &&
                           (B == 1 || g.stride_batch % kVec == 0) && cuda::is_aligned(src, 16) &&
                           cuda::is_aligned(dst, 16) && cuda::is_aligned(masks_p, kVec * sizeof(opmath_t));
    cuda::dispatch_chunk<kVec>(vectorize, g.layout, C, h * w, [&](auto vec, auto kind) {
      constexpr int V = decltype(vec)::value;
      constexpr cuda::ChunkKind K = decltype(kind)::value;
      cutmix_unmix_backward_kernel<scalar_t, V, K><<<cuda::sample_grid(slice / V, B), cuda::kThreads, 0, stream>>>(
          src, g.stride_subnet, g.stride_batch, masks_p, M, B, C, h, w, channels, g.layout, dst);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return grad_f;
}

}  // namespace

TORCH_LIBRARY_IMPL(mixshare_ops, CUDA, m) {
  m.impl("cutmix_unmix", &cutmix_unmix_cuda);
  m.impl("cutmix_unmix_backward", &cutmix_unmix_backward_cuda);
}

}  // namespace mixshare_ops
