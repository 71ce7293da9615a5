// CPU kernels: cutmix_unmix_pool and its backward.
//
// NCHW slices are walked one (b, c) plane of h * w elements at a time: the
// forward takes dot products of the contiguous plane with the masks, the
// backward writes the plane as a weighted sum of the masks. Channels_last
// slices are walked one sample at a time, pixel by pixel, with the inner
// loops over the contiguous channels. The masks of a sample (and their
// pooling denominators) are computed when a task first reaches it.
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

// The masks of one sample at a time and the reciprocals of their pooling
// denominators.
template <typename T>
class PoolMasks {
 public:
  PoolMasks(const at::Tensor& boxes, const UnmixWeights& wts, int64_t box_h, int64_t box_w, int64_t h, int64_t w,
            double ratio, bool masked)
      : masks_(boxes.const_data_ptr<int32_t>(), cpu::optional_ptr<T>(wts.inside), cpu::optional_ptr<T>(wts.outside),
               wts.subnets, box_h, box_w, h, w, static_cast<T>(ratio)),
        masked_(masked), cells_(h * w), inv_denom_(wts.subnets), ptrs_(wts.subnets) {}

  // Fills sample b's masks unless they are already there.
  void load(int64_t b) {
    if (b == loaded_) return;
    loaded_ = b;
    masks_.fill(b);
    for (size_t i = 0; i < ptrs_.size(); ++i) {
      ptrs_[i] = masks_.mask(i);
      inv_denom_[i] = T(1) / (masked_ ? cpu::masked_denominator(ptrs_[i], cells_) : static_cast<T>(cells_));
    }
  }

  const T* const* masks() const { return ptrs_.data(); }
  T inv_denom(int64_t i) const { return inv_denom_[i]; }

 private:
  cpu::UnmixMasks<T> masks_;
  bool masked_;
  int64_t cells_, loaded_ = -1;
  std::vector<T> inv_denom_;
  std::vector<const T*> ptrs_;
};

// What every task needs: sizes and the unmixing arguments.
struct PoolArgs {
  const at::Tensor* boxes;
  const UnmixWeights* weights;
  int64_t subnets, batch, channels, height, width;  // channels: C
  int64_t box_h, box_w, unmixed;                     // unmixed: the first `unmixed` channels are masked
  double ratio;
  bool masked;

  template <typename T>
  PoolMasks<T> masks() const {
    return PoolMasks<T>(*boxes, *weights, box_h, box_w, height, width, ratio, masked);
  }
};

// Pooled outputs out[i, b, c] of NCHW planes (b, c) in [begin, end):
// <features[b, c], mask_i> / denominator_i for c < unmixed, the plain mean
// of features[b, c] otherwise.
template <typename scalar_t>
MIXSHARE_CPU_MULTIVERSION void pool_planes(const PoolArgs& a, const scalar_t* src, scalar_t* dst, int64_t begin,
                                           int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t M = a.subnets, B = a.batch, C = a.channels, HW = a.height * a.width;
  const opmath_t cells = static_cast<opmath_t>(HW);
  auto masks = a.masks<opmath_t>();
  std::vector<opmath_t> dots(M);
  cpu::for_each_task(begin, end, C, [&](int64_t task, int64_t b, int64_t c) {
    const scalar_t* plane = src + task * HW;
    scalar_t* out = dst + b * C + c;  // out[i * B * C]: subnetwork i's result
    if (c >= a.unmixed) {
      opmath_t total = 0;
      cpu::for_each_opmath_chunk(plane, HW, [&](int64_t, const opmath_t* v, int64_t n) { total += cpu::sum(v, n); });
      for (int64_t i = 0; i < M; ++i) out[i * B * C] = cpu::from_opmath<scalar_t>(total / cells);
      return;
    }
    masks.load(b);
    const opmath_t* const* m = masks.masks();
    if (M == 2) {  // both dot products in one pass over the plane
      opmath_t d0 = 0, d1 = 0;
      cpu::for_each_opmath_chunk(plane, HW, [&](int64_t offset, const opmath_t* v, int64_t n) {
        opmath_t part0, part1;
        cpu::dot2(v, m[0] + offset, m[1] + offset, n, part0, part1);
        d0 += part0;
        d1 += part1;
      });
      out[0] = cpu::from_opmath<scalar_t>(d0 * masks.inv_denom(0));
      out[B * C] = cpu::from_opmath<scalar_t>(d1 * masks.inv_denom(1));
      return;
    }
    std::fill(dots.begin(), dots.end(), opmath_t(0));
    cpu::for_each_opmath_chunk(plane, HW, [&](int64_t offset, const opmath_t* v, int64_t n) {
      for (int64_t i = 0; i < M; ++i) dots[i] += cpu::dot(v, m[i] + offset, n);
    });
    for (int64_t i = 0; i < M; ++i) out[i * B * C] = cpu::from_opmath<scalar_t>(dots[i] * masks.inv_denom(i));
  });
}

// The same for channels_last samples [begin, end): accumulated pixel by
// pixel over the contiguous channels.
template <typename scalar_t>
MIXSHARE_CPU_MULTIVERSION void pool_samples(const PoolArgs& a, const scalar_t* src, scalar_t* dst, int64_t begin,
                                            int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t M = a.subnets, B = a.batch, C = a.channels, HW = a.height * a.width, unmixed = a.unmixed;
  const opmath_t cells = static_cast<opmath_t>(HW);
  auto masks = a.masks<opmath_t>();
  std::vector<opmath_t> acc(M * unmixed), plain(C - unmixed);
  for (int64_t b = begin; b < end; ++b) {
    masks.load(b);
    std::fill(acc.begin(), acc.end(), opmath_t(0));
    std::fill(plain.begin(), plain.end(), opmath_t(0));
    for (int64_t k = 0; k < HW; ++k) {
      const scalar_t* __restrict pixel = src + (b * HW + k) * C;
      for (int64_t i = 0; i < M; ++i) {
        opmath_t* __restrict sums = acc.data() + i * unmixed;
        const opmath_t m = masks.masks()[i][k];
        for (int64_t c = 0; c < unmixed; ++c) sums[c] += cpu::to_opmath(pixel[c]) * m;
      }
      opmath_t* __restrict sums = plain.data();
      for (int64_t c = unmixed; c < C; ++c) sums[c - unmixed] += cpu::to_opmath(pixel[c]);
    }
    for (int64_t i = 0; i < M; ++i) {
      scalar_t* out = dst + (i * B + b) * C;
      for (int64_t c = 0; c < unmixed; ++c)
        out[c] = cpu::from_opmath<scalar_t>(acc[i * unmixed + c] * masks.inv_denom(i));
      for (int64_t c = unmixed; c < C; ++c) out[c] = cpu::from_opmath<scalar_t>(plain[c - unmixed] / cells);
    }
  }
}

// sum_i grad_out[i, b, c] / (h * w): the gradient of plain channel c of sample b.
template <typename scalar_t>
scalar_t plain_grad(const PoolArgs& a, const scalar_t* g, int64_t b, int64_t c) {
  using opmath_t = at::opmath_type<scalar_t>;
  opmath_t total = 0;
  for (int64_t i = 0; i < a.subnets; ++i) total += cpu::to_opmath(g[(i * a.batch + b) * a.channels + c]);
  return cpu::from_opmath<scalar_t>(total / static_cast<opmath_t>(a.height * a.width));
}

// grad_features of NCHW planes (b, c) in [begin, end), from grad_out
// [M, B, C] (contiguous): sum_i grad_out[i, b, c] / denominator_i * mask_i for
// c < unmixed, a constant otherwise.
template <typename scalar_t>
MIXSHARE_CPU_MULTIVERSION void pool_backward_planes(const PoolArgs& a, const scalar_t* g, scalar_t* dst,
                                                    int64_t begin, int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t M = a.subnets, B = a.batch, C = a.channels, HW = a.height * a.width;
  auto masks = a.masks<opmath_t>();
  std::vector<opmath_t> scaled(M);
  cpu::for_each_task(begin, end, C, [&](int64_t task, int64_t b, int64_t c) {
    scalar_t* out = dst + task * HW;
    if (c >= a.unmixed) {
      std::fill(out, out + HW, plain_grad(a, g, b, c));
      return;
    }
    masks.load(b);
    for (int64_t i = 0; i < M; ++i) scaled[i] = cpu::to_opmath(g[(i * B + b) * C + c]) * masks.inv_denom(i);
    cpu::weighted_sum(masks.masks(), 0, scaled.data(), M, HW, out);
  });
}

// The same for channels_last samples [begin, end), written pixel by pixel
// over the contiguous channels.
template <typename scalar_t>
MIXSHARE_CPU_MULTIVERSION void pool_backward_samples(const PoolArgs& a, const scalar_t* g, scalar_t* dst,
                                                     int64_t begin, int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t M = a.subnets, B = a.batch, C = a.channels, HW = a.height * a.width, unmixed = a.unmixed;
  auto masks = a.masks<opmath_t>();
  std::vector<opmath_t> scaled(M * unmixed), pixel_masks(M);
  std::vector<const opmath_t*> scaled_ptrs(M);
  std::vector<scalar_t> plain(C - unmixed);
  for (int64_t b = begin; b < end; ++b) {
    masks.load(b);
    for (int64_t i = 0; i < M; ++i) {
      scaled_ptrs[i] = scaled.data() + i * unmixed;
      for (int64_t c = 0; c < unmixed; ++c)
        scaled[i * unmixed + c] = cpu::to_opmath(g[(i * B + b) * C + c]) * masks.inv_denom(i);
    }
    for (int64_t c = unmixed; c < C; ++c) plain[c - unmixed] = plain_grad(a, g, b, c);
    for (int64_t k = 0; k < HW; ++k) {
      scalar_t* out = dst + (b * HW + k) * C;
      for (int64_t i = 0; i < M; ++i) pixel_masks[i] = masks.masks()[i][k];
      cpu::weighted_sum(scaled_ptrs.data(), 0, pixel_masks.data(), M, unmixed, out);
      std::copy(plain.begin(), plain.end(), out + unmixed);
    }
  }
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
  at::Tensor out = at::empty({wts.subnets, f.batch, f.channels}, features.options());
  if (out.numel() == 0) return out;
  const PoolArgs args{&boxes_c, &wts, wts.subnets, f.batch, f.channels, f.height, f.width,
                      box_height, box_width, channels, ratio, masked};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "cutmix_unmix_pool_cpu", [&] {
    const scalar_t* src = f.data.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const int64_t HW = f.height * f.width;
    if (f.layout == Layout::kChannelsFirst) {
      at::parallel_for(0, f.batch * f.channels, cpu::grain_for(HW * wts.subnets), [&](int64_t begin, int64_t end) {
        pool_planes(args, src, dst, begin, end);
      });
    } else {
      at::parallel_for(0, f.batch, cpu::grain_for(f.channels * HW * wts.subnets), [&](int64_t begin, int64_t end) {
        pool_samples(args, src, dst, begin, end);
      });
    }
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
  const int64_t batch = grad_out.size(1), C = grad_out.size(2);
  const Layout layout = channels_last ? Layout::kChannelsLast : Layout::kChannelsFirst;
  at::Tensor grad_f = empty_features(batch, C, height, width, layout, grad_out.options());
  if (grad_f.numel() == 0) return grad_f;
  const at::Tensor g = grad_out.contiguous();
  const PoolArgs args{&arg.boxes, &arg.weights, arg.weights.subnets, batch, C, height, width,
                      box_height, box_width, channels, ratio, arg.masked};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "cutmix_unmix_pool_backward_cpu", [&] {
    const scalar_t* src = g.const_data_ptr<scalar_t>();
    scalar_t* dst = grad_f.data_ptr<scalar_t>();
    const int64_t per_plane = height * width * (args.subnets + 1);
    if (!channels_last) {
      at::parallel_for(0, batch * C, cpu::grain_for(per_plane), [&](int64_t begin, int64_t end) {
        pool_backward_planes(args, src, dst, begin, end);
      });
    } else {
      at::parallel_for(0, batch, cpu::grain_for(C * per_plane), [&](int64_t begin, int64_t end) {
        pool_backward_samples(args, src, dst, begin, end);
      });
    }
  });
  return grad_f;
}

}  // namespace

TORCH_LIBRARY_IMPL(mixshare_ops, CPU, m) {
  m.impl("cutmix_unmix_pool", &cutmix_unmix_pool_cpu);
  m.impl("cutmix_unmix_pool_backward", &cutmix_unmix_pool_backward_cpu);
}

}  // namespace mixshare_ops
