// CPU kernels: cutmix_unmix and its backward.
//
// The work is split into tasks, each a contiguous piece of one sample: a
// (b, c) plane of h * w elements in NCHW slices, where the inner loops
// multiply the plane by contiguous masks, or a whole sample in channels_last
// slices, walked pixel by pixel with the inner loops over the contiguous
// channels and the masks fixed per pixel. The masks of a sample are computed
// when a task first reaches it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../box_math.h"
#include "../op_args.h"
#include "kernel_utils.h"
#include "unmix_masks.h"

namespace mixshare_ops {
namespace {

// What every task needs: sizes, the unmixing arguments and the memory split.
struct UnmixArgs {
  const int32_t* boxes;
  const UnmixWeights* weights;
  int64_t subnets, channels, height, width;  // channels: C
  int64_t box_h, box_w, unmixed;             // unmixed: the first `unmixed` channels are masked
  double ratio;
  bool nchw;
  int64_t tasks_per_sample;  // C (NCHW) or 1 (channels_last)
  int64_t task_size;         // elements per task: h * w (NCHW) or C * h * w

  UnmixArgs(const at::Tensor& boxes_c, const UnmixWeights& wts, Layout layout, int64_t C, int64_t h, int64_t w,
            int64_t box_height, int64_t box_width, double fade_ratio, int64_t unmixed_channels)
      : boxes(boxes_c.const_data_ptr<int32_t>()), weights(&wts), subnets(wts.subnets), channels(C), height(h),
        width(w), box_h(box_height), box_w(box_width), unmixed(unmixed_channels), ratio(fade_ratio),
        nchw(layout == Layout::kChannelsFirst), tasks_per_sample(nchw ? C : 1),
        task_size(nchw ? h * w : C * h * w) {}

  template <typename T>
  cpu::UnmixMasks<T> masks() const {
    return cpu::UnmixMasks<T>(boxes, cpu::optional_ptr<T>(weights->inside), cpu::optional_ptr<T>(weights->outside),
                              subnets, box_h, box_w, height, width, static_cast<T>(ratio));
  }
};

// out[i] = features * mask_i on the first `unmixed` channels, features
// elsewhere, for tasks [begin, end); out[i] starts at dst + i * stride_subnet.
template <typename scalar_t>
MIXSHARE_CPU_MULTIVERSION void unmix_tasks(const UnmixArgs& a, const scalar_t* src, scalar_t* dst,
                                           int64_t stride_subnet, int64_t begin, int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t M = a.subnets, C = a.channels, HW = a.height * a.width;
  auto masks = a.masks<opmath_t>();
  int64_t filled = -1;  // the sample whose masks are in `masks`
  std::vector<const opmath_t*> mask_ptrs(M);
  std::vector<scalar_t*> outs(M);
  cpu::for_each_task(begin, end, a.tasks_per_sample, [&](int64_t task, int64_t b, int64_t c) {
    const int64_t offset = task * a.task_size;
    const scalar_t* in = src + offset;
    for (int64_t i = 0; i < M; ++i) outs[i] = dst + i * stride_subnet + offset;
    if (a.nchw && c >= a.unmixed) {  // passed through
      for (int64_t i = 0; i < M; ++i) std::copy(in, in + HW, outs[i]);
      return;
    }
    if (b != filled) {
      masks.fill(filled = b);
      for (int64_t i = 0; i < M; ++i) mask_ptrs[i] = masks.mask(i);
    }
    if (a.nchw) {
      cpu::multiply_runs(in, mask_ptrs.data(), M, HW, outs.data());
      return;
    }
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t k = 0; k < HW; ++k) {
        cpu::scale_run(in + k * C, mask_ptrs[i][k], a.unmixed, outs[i] + k * C);
        std::copy(in + k * C + a.unmixed, in + (k + 1) * C, outs[i] + k * C + a.unmixed);
      }
    }
  });
}

// grad_features = sum_i grad_out[i] * mask_i on the first `unmixed`
// channels, sum_i grad_out[i] elsewhere, for tasks [begin, end).
template <typename scalar_t>
MIXSHARE_CPU_MULTIVERSION void unmix_backward_tasks(const UnmixArgs& a, const StackedArg& g, scalar_t* dst,
                                                    int64_t begin, int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t M = a.subnets, C = a.channels, HW = a.height * a.width;
  const scalar_t* src = g.data.const_data_ptr<scalar_t>();
  auto masks = a.masks<opmath_t>();
  int64_t filled = -1;
  std::vector<const scalar_t*> grads(M);
  std::vector<const opmath_t*> mask_ptrs(M);
  const std::vector<opmath_t> ones(M, opmath_t(1));
  std::vector<opmath_t> pixel_masks(M);
  cpu::for_each_task(begin, end, a.tasks_per_sample, [&](int64_t task, int64_t b, int64_t c) {
    for (int64_t i = 0; i < M; ++i) grads[i] = src + i * g.stride_subnet + b * g.stride_batch + c * a.task_size;
    scalar_t* out = dst + task * a.task_size;
    if (a.nchw && c >= a.unmixed) {  // passed through: the sum over subnetworks
      cpu::weighted_sum(grads.data(), 0, ones.data(), M, HW, out);
      return;
    }
    if (b != filled) {
      masks.fill(filled = b);
      for (int64_t i = 0; i < M; ++i) mask_ptrs[i] = masks.mask(i);
    }
    if (a.nchw) {
      cpu::masked_sum(grads.data(), mask_ptrs.data(), M, HW, out);
      return;
    }
    for (int64_t k = 0; k < HW; ++k) {
      for (int64_t i = 0; i < M; ++i) pixel_masks[i] = mask_ptrs[i][k];
      cpu::weighted_sum(grads.data(), k * C, pixel_masks.data(), M, a.unmixed, out + k * C);
      cpu::weighted_sum(grads.data(), k * C + a.unmixed, ones.data(), M, C - a.unmixed, out + k * C + a.unmixed);
    }
  });
}

at::Tensor cutmix_unmix_cpu(const at::Tensor& features, const at::Tensor& boxes,
                            const std::optional<at::Tensor>& inside_weight,
                            const std::optional<at::Tensor>& outside_weight, int64_t box_height, int64_t box_width,
                            double ratio, int64_t channels) {
  const FeatureArg f = feature_arg(features, "features");
  check_unmix_scalars(box_height, box_width, f.height, f.width, ratio, channels, f.channels);
  const at::Tensor boxes_c = boxes_arg(boxes, features, "features", f.batch, box_height, box_width);
  const UnmixWeights wts =
      unmix_weights_arg(inside_weight, outside_weight, features, "features", f.batch, opmath_dtype(features.scalar_type()));
  at::Tensor out = empty_stacked(wts.subnets, f.batch, f.channels, f.height, f.width, f.layout, features.options());
  if (out.numel() == 0) return out;
  const UnmixArgs args(boxes_c, wts, f.layout, f.channels, f.height, f.width, box_height, box_width, ratio, channels);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "cutmix_unmix_cpu", [&] {
    const scalar_t* src = f.data.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const int64_t tasks = f.batch * args.tasks_per_sample, stride_subnet = out.stride(0);
    at::parallel_for(0, tasks, cpu::grain_for(args.task_size * (args.subnets + 1)), [&](int64_t begin, int64_t end) {
      unmix_tasks(args, src, dst, stride_subnet, begin, end);
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
  at::Tensor grad_f = empty_features(g.batch, g.channels, g.height, g.width, g.layout, grad_out.options());
  if (grad_f.numel() == 0) return grad_f;
  const UnmixArgs args(boxes_c, wts, g.layout, g.channels, g.height, g.width, box_height, box_width, ratio, channels);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "cutmix_unmix_backward_cpu", [&] {
    scalar_t* dst = grad_f.data_ptr<scalar_t>();
    const int64_t tasks = g.batch * args.tasks_per_sample;
    at::parallel_for(0, tasks, cpu::grain_for(args.task_size * (args.subnets + 1)), [&](int64_t begin, int64_t end) {
      unmix_backward_tasks(args, g, dst, begin, end);
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
