// CPU kernels: cutmix_unmix and its backward.
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

at::Tensor cutmix_unmix_cpu(const at::Tensor& features, const at::Tensor& boxes,
                            const std::optional<at::Tensor>& inside_weight,
                            const std::optional<at::Tensor>& outside_weight, int64_t box_height, int64_t box_width,
                            double ratio, int64_t channels) {
  const FeatureArg f = feature_arg(features, "features");
  check_unmix_scalars(box_height, box_width, f.height, f.width, ratio, channels, f.channels);
  const at::Tensor boxes_c = boxes_arg(boxes, features, "features", f.batch, box_height, box_width);
  const UnmixWeights wts =
      unmix_weights_arg(inside_weight, outside_weight, features, "features", f.batch, opmath_dtype(features.scalar_type()));
  const int64_t M = wts.subnets, C = f.channels, h = f.height, w = f.width, HW = h * w, slice = C * HW;
  at::Tensor out = empty_stacked(M, f.batch, C, h, w, f.layout, features.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "cutmix_unmix_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* src = f.data.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const int64_t stride_m = f.batch * slice;
    at::parallel_for(0, f.batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> masks(M * HW);
      for (int64_t b = begin; b < end; ++b) {
        cpu::fill_unmix_masks(boxes_c.const_data_ptr<int32_t>(), cpu::optional_ptr<opmath_t>(wts.inside),
                              cpu::optional_ptr<opmath_t>(wts.outside), b, M, box_height, box_width, h, w,
                              static_cast<opmath_t>(ratio), masks.data());
        const scalar_t* fb = src + b * slice;
        for (int64_t i = 0; i < M; ++i) {
          scalar_t* ob = dst + i * stride_m + b * slice;
          const opmath_t* mask = masks.data() + i * HW;
          if (f.layout == Layout::kChannelsFirst) {
            for (int64_t c = 0; c < C; ++c) {
              const scalar_t* fc = fb + c * HW;
              scalar_t* oc = ob + c * HW;
              if (c < channels) {
                for (int64_t k = 0; k < HW; ++k) oc[k] = static_cast<scalar_t>(static_cast<opmath_t>(fc[k]) * mask[k]);
              } else {
                for (int64_t k = 0; k < HW; ++k) oc[k] = fc[k];
              }
            }
          } else {
            for (int64_t k = 0; k < HW; ++k) {
              const scalar_t* fp = fb + k * C;
              scalar_t* op = ob + k * C;
              for (int64_t c = 0; c < channels; ++c) op[c] = static_cast<scalar_t>(static_cast<opmath_t>(fp[c]) * mask[k]);
              for (int64_t c = channels; c < C; ++c) op[c] = fp[c];
            }
          }
        }
      }
    });
  });
  return out;
}

at::Tensor cutmix_unmix_backward_cpu(const at::Tensor& grad_out, const at::Tensor& boxes,
                                     const std::optional<at::Tensor>& inside_weight,
                                     const std::optional<at::Tensor>& outside_weight, int64_t box_height,
                                     int64_t box_width, double ratio, int64_t channels) {
  const StackedArg g = stacked_arg(grad_out, "grad_out");
  check_unmix_scalars(box_height, box_width, g.height, g.width, ratio, channels, g.channels);
  const at::Tensor boxes_c = boxes_arg(boxes, grad_out, "grad_out", g.batch, box_height, box_width);
  const UnmixWeights wts =
      unmix_weights_arg(inside_weight, outside_weight, grad_out, "grad_out", g.batch, opmath_dtype(grad_out.scalar_type()));
  TORCH_CHECK_VALUE(wts.subnets == g.subnets, "grad_out must have M = ", wts.subnets, " (from the weights) along dim 0, got ",
              g.subnets);
  const int64_t M = g.subnets, C = g.channels, h = g.height, w = g.width, HW = h * w, slice = C * HW;
  at::Tensor grad_f = empty_features(g.batch, C, h, w, g.layout, grad_out.options());
  if (grad_f.numel() == 0) return grad_f;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "cutmix_unmix_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* src = g.data.const_data_ptr<scalar_t>();
    scalar_t* dst = grad_f.data_ptr<scalar_t>();
    at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> masks(M * HW);
      for (int64_t b = begin; b < end; ++b) {
        cpu::fill_unmix_masks(boxes_c.const_data_ptr<int32_t>(), cpu::optional_ptr<opmath_t>(wts.inside),
                              cpu::optional_ptr<opmath_t>(wts.outside), b, M, box_height, box_width, h, w,
                              static_cast<opmath_t>(ratio), masks.data());
        scalar_t* db = dst + b * slice;
        for (int64_t k = 0; k < slice; ++k) {
          int64_t c, y, x;
          detail::split_slice_index(g.layout, k, C, h, w, c, y, x);
          const int64_t cell = y * w + x;
          opmath_t acc = 0;
          for (int64_t i = 0; i < M; ++i) {
            const opmath_t gv = static_cast<opmath_t>(src[i * g.stride_subnet + b * g.stride_batch + k]);
            acc += c < channels ? gv * masks[i * HW + cell] : gv;
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
  m.impl("cutmix_unmix", &cutmix_unmix_cpu);
  m.impl("cutmix_unmix_backward", &cutmix_unmix_backward_cpu);
}

}  // namespace mixshare_ops
