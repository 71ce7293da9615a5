// CPU kernels: cutmix_unmix_pool and its backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../box_math.h"
#include "../op_args.h"
#include "unmix_masks.h"

namespace mixshare_ops {
namespace {

// masks [M, h*w] of sample b and the reciprocal pooling denominators [M].
template <typename T>
void masks_and_scales(const int32_t* boxes, const UnmixWeights& wts, int64_t b, int64_t box_h, int64_t box_w,
                      int64_t h, int64_t w, T ratio, bool masked, T* masks, T* inv_denom) {
  const int64_t M = wts.subnets, HW = h * w;
  cpu::fill_unmix_masks(boxes, cpu::optional_ptr<T>(wts.inside), cpu::optional_ptr<T>(wts.outside), b, M, box_h,
                        box_w, h, w, ratio, masks);
  for (int64_t i = 0; i < M; ++i)
    inv_denom[i] = T(1) / (masked ? cpu::masked_denominator(masks + i * HW, HW) : static_cast<T>(HW));
}

at::Tensor cutmix_unmix_pool_cpu(const at::Tensor& features, const at::Tensor& boxes,
                                 const std::optional<at::Tensor>& inside_weight,
                                 const std::optional<at::Tensor>& outside_weight, int64_t box_height,
                                 int64_t box_width, double ratio, int64_t channels, c10::string_view normalize) {
  const FeatureArg f = feature_arg(features, "features");
  check_unmix_scalars(box_height, box_width, f.height, f.width, ratio, channels, f.channels);
  const bool masked = parse_normalize(std::string(normalize));
  const at::Tensor boxes_c = boxes_arg(boxes, features, "features", f.batch, box_height, box_width);
  const UnmixWeights wts =
      unmix_weights_arg(inside_weight, outside_weight, features, "features", f.batch, opmath_dtype(features.scalar_type()));
  const int64_t M = wts.subnets, C = f.channels, h = f.height, w = f.width, HW = h * w, slice = C * HW;
  at::Tensor out = at::empty({M, f.batch, C}, features.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "cutmix_unmix_pool_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* src = f.data.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, f.batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> masks(M * HW), inv_denom(M), acc(M * C);
      for (int64_t b = begin; b < end; ++b) {
        masks_and_scales(boxes_c.const_data_ptr<int32_t>(), wts, b, box_height, box_width, h, w,
                         static_cast<opmath_t>(ratio), masked, masks.data(), inv_denom.data());
        std::fill(acc.begin(), acc.end(), opmath_t(0));
        const scalar_t* fb = src + b * slice;
        for (int64_t k = 0; k < slice; ++k) {
          int64_t c, y, x;
          detail::split_slice_index(f.layout, k, C, h, w, c, y, x);
          const opmath_t v = static_cast<opmath_t>(fb[k]);
          if (c < channels) {
            for (int64_t i = 0; i < M; ++i) acc[i * C + c] += v * masks[i * HW + y * w + x];
          } else {
            acc[c] += v;  // shared by every subnetwork
          }
        }
        for (int64_t i = 0; i < M; ++i)
          for (int64_t c = 0; c < C; ++c)
            dst[(i * f.batch + b) * C + c] = static_cast<scalar_t>(
                c < channels ? acc[i * C + c] * inv_denom[i] : acc[c] / static_cast<opmath_t>(HW));
      }
    });
  });
  return out;
}

at::Tensor cutmix_unmix_pool_backward_cpu(const at::Tensor& grad_out, const at::Tensor& boxes,
                                          const std::optional<at::Tensor>& inside_weight,
                                          const std::optional<at::Tensor>& outside_weight, int64_t box_height,
                                          int64_t box_width, double ratio, int64_t channels,
                                          c10::string_view normalize, int64_t height, int64_t width,
                                          bool channels_last) {
  const PoolGradArg arg = pool_grad_arg(grad_out, boxes, inside_weight, outside_weight, box_height, box_width, ratio,
                                        channels, normalize, height, width);
  const at::Tensor& boxes_c = arg.boxes;
  const UnmixWeights& wts = arg.weights;
  const bool masked = arg.masked;
  const int64_t M = wts.subnets, batch = grad_out.size(1), C = grad_out.size(2), h = height, w = width,
                HW = h * w, slice = C * HW;
  const Layout layout = channels_last ? Layout::kChannelsLast : Layout::kChannelsFirst;
  at::Tensor grad_f = empty_features(batch, C, h, w, layout, grad_out.options());
  if (grad_f.numel() == 0) return grad_f;
  const at::Tensor g = grad_out.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "cutmix_unmix_pool_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* src = g.const_data_ptr<scalar_t>();
    scalar_t* dst = grad_f.data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> masks(M * HW), inv_denom(M), gscaled(M * C), gplain(C);
      for (int64_t b = begin; b < end; ++b) {
        masks_and_scales(boxes_c.const_data_ptr<int32_t>(), wts, b, box_height, box_width, h, w,
                         static_cast<opmath_t>(ratio), masked, masks.data(), inv_denom.data());
        for (int64_t c = 0; c < C; ++c) {
          gplain[c] = 0;
          for (int64_t i = 0; i < M; ++i) {
            const opmath_t gv = static_cast<opmath_t>(src[(i * batch + b) * C + c]);
            gscaled[i * C + c] = gv * inv_denom[i];
            gplain[c] += gv;
          }
          gplain[c] /= static_cast<opmath_t>(HW);
        }
        scalar_t* db = dst + b * slice;
        for (int64_t k = 0; k < slice; ++k) {
          int64_t c, y, x;
          detail::split_slice_index(layout, k, C, h, w, c, y, x);
          opmath_t acc;
          if (c < channels) {
            acc = 0;
            for (int64_t i = 0; i < M; ++i) acc += gscaled[i * C + c] * masks[i * HW + y * w + x];
          } else {
            acc = gplain[c];
          }
          db[k] = static_cast<scalar_t>(acc);
        }
      }
    });
  });
  return grad_f;
}

}  // namespace

TORCH_LIBRARY_IMPL(mixshare_ops, CPU, m) {
  m.impl("cutmix_unmix_pool", &cutmix_unmix_pool_cpu);
  m.impl("cutmix_unmix_pool_backward", &cutmix_unmix_pool_backward_cpu);
}

}  // namespace mixshare_ops
