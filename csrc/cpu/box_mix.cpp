// CPU kernels: box_mix and its backward.
//
// Both kernels walk "planes", their parallel tasks: the H x W pixels of one
// (b, c) in NCHW slices, or of one b with its C channels interleaved in
// channels_last slices. Either way a plane is contiguous in memory. NCHW
// planes are processed whole against per-pixel weight maps; channels_last
// planes are long, and sample b's box cuts them into long runs that lie
// alternately outside and inside the box, within which every weight is
// fixed. Either way the inner loops are plain vectorisable loops.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../box_math.h"
#include "../op_args.h"
#include "kernel_utils.h"

namespace mixshare_ops {
namespace {

using detail::Box;

// How a [C, H, W] slice splits into planes.
struct Planes {
  int64_t per_sample;  // planes per slice: C (NCHW) or 1 (NHWC)
  int64_t per_pixel;   // elements per pixel within a plane: 1 (NCHW) or C (NHWC)
  int64_t size;        // elements per plane: H * W * per_pixel

  Planes(Layout layout, int64_t channels, int64_t height, int64_t width)
      : per_sample(layout == Layout::kChannelsFirst ? channels : 1),
        per_pixel(layout == Layout::kChannelsFirst ? 1 : channels),
        size(height * width * per_pixel) {}
};

// Calls fn(begin, end, inside) for the runs of a plane, in memory order:
// [begin, end) lies entirely outside the box (inside = false) or inside it.
// Full-width boxes give a single inside run; empty runs are skipped.
template <typename Fn>
void for_each_run(const Box& box, int64_t width, const Planes& planes, Fn&& fn) {
  int64_t pos = 0;  // start of the outside run in progress
  if (box.top < box.bottom && box.left < box.right) {
    const bool full_width = box.left == 0 && box.right == width;
    const int64_t rows_per_run = full_width ? box.bottom - box.top : 1;
    for (int64_t y = box.top; y < box.bottom; y += rows_per_run) {
      const int64_t begin = (y * width + box.left) * planes.per_pixel;
      const int64_t end = ((y + rows_per_run - 1) * width + box.right) * planes.per_pixel;
      if (begin > pos) fn(pos, begin, false);
      fn(begin, end, true);
      pos = end;
    }
  }
  if (pos < planes.size) fn(pos, planes.size, false);
}

// The inputs of both kernels, in the opmath type.
template <typename scalar_t>
struct MixArgs {
  using opmath_t = at::opmath_type<scalar_t>;
  const int32_t* boxes;
  const opmath_t* w_in;   // [B, M]
  const opmath_t* w_out;  // [B, M]
  opmath_t scale;
  int64_t subnets, height, width;
  Planes planes;
};

// NCHW planes are only H * W elements (1024 for CIFAR), and a box cuts them
// into runs too short to vectorise well; there every subnetwork gets a map of
// its scaled weight at each pixel instead, and the planes are processed
// whole. The maps of one sample at a time, computed when a task reaches it.
template <typename scalar_t>
class WeightMaps {
  using opmath_t = at::opmath_type<scalar_t>;

 public:
  explicit WeightMaps(const MixArgs<scalar_t>& a) : a_(a) {}

  // Fills sample b's maps unless they are already there.
  void load(int64_t b) {
    if (b == loaded_) return;
    loaded_ = b;
    const int64_t M = a_.subnets, H = a_.height, W = a_.width;
    if (maps_.empty()) {  // allocated on first use: channels_last tasks never need them
      maps_.resize(M * H * W);
      for (int64_t i = 0; i < M; ++i) ptrs_.push_back(maps_.data() + i * H * W);
    }
    const Box box = detail::load_box(a_.boxes, b, H, W);
    for (int64_t i = 0; i < M; ++i) {
      opmath_t* map = maps_.data() + i * H * W;
      std::fill(map, map + H * W, a_.scale * a_.w_out[b * M + i]);
      const opmath_t inside = a_.scale * a_.w_in[b * M + i];
      for (int64_t y = box.top; y < box.bottom; ++y) std::fill(map + y * W + box.left, map + y * W + box.right, inside);
    }
  }

  const opmath_t* const* maps() const { return ptrs_.data(); }

 private:
  const MixArgs<scalar_t>& a_;
  int64_t loaded_ = -1;
  std::vector<opmath_t> maps_;
  std::vector<const opmath_t*> ptrs_;
};

// box_mix of planes [begin, end) of a stacked x with the given strides.
template <typename scalar_t>
MIXSHARE_CPU_MULTIVERSION void box_mix_planes(const MixArgs<scalar_t>& a, const scalar_t* src, int64_t stride_subnet,
                                              int64_t stride_batch, scalar_t* dst, int64_t begin, int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t M = a.subnets, per_sample = a.planes.per_sample, size = a.planes.size;
  const bool nchw = a.planes.per_pixel == 1;
  WeightMaps<scalar_t> maps(a);
  std::vector<const scalar_t*> x(M);
  std::vector<opmath_t> weights(2 * M);  // channels_last: outside weights, then inside weights, times scale
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / per_sample, plane = task % per_sample;
    for (int64_t i = 0; i < M; ++i) x[i] = src + i * stride_subnet + b * stride_batch + plane * size;
    scalar_t* out = dst + task * size;
    if (nchw) {
      maps.load(b);
      cpu::masked_sum(x.data(), maps.maps(), M, size, out);
      continue;
    }
    for (int64_t i = 0; i < M; ++i) {
      weights[i] = a.scale * a.w_out[b * M + i];
      weights[M + i] = a.scale * a.w_in[b * M + i];
    }
    for_each_run(detail::load_box(a.boxes, b, a.height, a.width), a.width, a.planes,
                 [&](int64_t k0, int64_t k1, bool inside) {
                   cpu::weighted_sum(x.data(), k0, weights.data() + (inside ? M : 0), M, k1 - k0, out + k0);
                 });
  }
}

// box_mix_backward of planes [begin, end) of grad_out; grad_x[i] starts at
// dst + i * stride_subnet.
template <typename scalar_t>
MIXSHARE_CPU_MULTIVERSION void box_mix_backward_planes(const MixArgs<scalar_t>& a, const scalar_t* src, scalar_t* dst,
                                                       int64_t stride_subnet, int64_t begin, int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t M = a.subnets, size = a.planes.size;
  const bool nchw = a.planes.per_pixel == 1;
  WeightMaps<scalar_t> maps(a);
  std::vector<scalar_t*> out(M);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / a.planes.per_sample, offset = task * size;
    if (nchw) {
      maps.load(b);
      for (int64_t i = 0; i < M; ++i) out[i] = dst + i * stride_subnet + offset;
      cpu::multiply_runs(src + offset, maps.maps(), M, size, out.data());
      continue;
    }
    for_each_run(detail::load_box(a.boxes, b, a.height, a.width), a.width, a.planes,
                 [&](int64_t k0, int64_t k1, bool inside) {
                   const opmath_t* w = (inside ? a.w_in : a.w_out) + b * M;
                   for (int64_t i = 0; i < M; ++i)
                     cpu::scale_run(src + offset + k0, a.scale * w[i], k1 - k0, dst + i * stride_subnet + offset + k0);
                 });
  }
}

template <typename scalar_t>
MixArgs<scalar_t> mix_args(const at::Tensor& boxes, const at::Tensor& w_in, const at::Tensor& w_out, double scale,
                           int64_t subnets, Layout layout, int64_t channels, int64_t height, int64_t width) {
  using opmath_t = at::opmath_type<scalar_t>;
  return {boxes.const_data_ptr<int32_t>(),
          w_in.const_data_ptr<opmath_t>(),
          w_out.const_data_ptr<opmath_t>(),
          static_cast<opmath_t>(scale),
          subnets,
          height,
          width,
          Planes(layout, channels, height, width)};
}

at::Tensor box_mix_cpu(const at::Tensor& x, const at::Tensor& boxes, const at::Tensor& inside_weight,
                       const at::Tensor& outside_weight, double scale) {
  const StackedArg in = stacked_arg(x, "x");
  check_scale(scale);
  const at::Tensor boxes_c = boxes_arg(boxes, x, "x", in.batch, in.height, in.width);
  const auto opmath = opmath_dtype(x.scalar_type());
  const at::Tensor w_in = weights_arg(inside_weight, "inside_weight", x, "x", in.batch, in.subnets, opmath);
  const at::Tensor w_out = weights_arg(outside_weight, "outside_weight", x, "x", in.batch, in.subnets, opmath);
  at::Tensor out = empty_features(in.batch, in.channels, in.height, in.width, in.layout, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "box_mix_cpu", [&] {
    const auto args = mix_args<scalar_t>(boxes_c, w_in, w_out, scale, in.subnets, in.layout, in.channels, in.height,
                                         in.width);
    const scalar_t* src = in.data.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const int64_t planes = in.batch * args.planes.per_sample;
    at::parallel_for(0, planes, cpu::grain_for(args.planes.size * (in.subnets + 1)), [&](int64_t begin, int64_t end) {
      box_mix_planes(args, src, in.stride_subnet, in.stride_batch, dst, begin, end);
    });
  });
  return out;
}

at::Tensor box_mix_backward_cpu(const at::Tensor& grad_out, const at::Tensor& boxes, const at::Tensor& inside_weight,
                                const at::Tensor& outside_weight, double scale) {
  const FeatureArg g = feature_arg(grad_out, "grad_out");
  check_scale(scale);
  const int64_t M = subnets_arg(inside_weight);
  const at::Tensor boxes_c = boxes_arg(boxes, grad_out, "grad_out", g.batch, g.height, g.width);
  const auto opmath = opmath_dtype(grad_out.scalar_type());
  const at::Tensor w_in = weights_arg(inside_weight, "inside_weight", grad_out, "grad_out", g.batch, M, opmath);
  const at::Tensor w_out = weights_arg(outside_weight, "outside_weight", grad_out, "grad_out", g.batch, M, opmath);
  at::Tensor grad_x = empty_stacked(M, g.batch, g.channels, g.height, g.width, g.layout, grad_out.options());
  if (grad_x.numel() == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "box_mix_backward_cpu", [&] {
    const auto args = mix_args<scalar_t>(boxes_c, w_in, w_out, scale, M, g.layout, g.channels, g.height, g.width);
    const scalar_t* src = g.data.const_data_ptr<scalar_t>();
    scalar_t* dst = grad_x.data_ptr<scalar_t>();
    const int64_t planes = g.batch * args.planes.per_sample, stride_subnet = grad_x.stride(0);
    at::parallel_for(0, planes, cpu::grain_for(args.planes.size * (M + 1)), [&](int64_t begin, int64_t end) {
      box_mix_backward_planes(args, src, dst, stride_subnet, begin, end);
    });
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(mixshare_ops, CPU, m) {
  m.impl("box_mix", &box_mix_cpu);
  m.impl("box_mix_backward", &box_mix_backward_cpu);
}

}  // namespace mixshare_ops
