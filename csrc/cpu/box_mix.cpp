// CPU kernels: box_mix and its backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../box_math.h"
#include "../op_args.h"

namespace mixshare_ops {
namespace {

using detail::Box;

// Calls fn(x_begin, x_end, inside) for the three runs of row y that lie
// left of, inside and right of the box (empty runs are skipped).
template <typename Fn>
void for_each_run(const Box& box, int64_t y, int64_t width, Fn&& fn) {
  const bool row_in = y >= box.top && y < box.bottom && box.left < box.right;
  if (!row_in) {
    fn(int64_t(0), width, false);
    return;
  }
  if (box.left > 0) fn(int64_t(0), box.left, false);
  fn(box.left, box.right, true);
  if (box.right < width) fn(box.right, width, false);
}

at::Tensor box_mix_cpu(const at::Tensor& x, const at::Tensor& boxes, const at::Tensor& inside_weight,
                       const at::Tensor& outside_weight, double scale) {
  const StackedArg in = stacked_arg(x, "x");
  const at::Tensor boxes_c = boxes_arg(boxes, x, "x", in.batch, in.height, in.width);
  const auto opmath = opmath_dtype(x.scalar_type());
  const at::Tensor w_in = weights_arg(inside_weight, "inside_weight", x, "x", in.batch, in.subnets, opmath);
  const at::Tensor w_out = weights_arg(outside_weight, "outside_weight", x, "x", in.batch, in.subnets, opmath);
  at::Tensor out = empty_features(in.batch, in.channels, in.height, in.width, in.layout, x.options());
  if (out.numel() == 0) return out;
  const int64_t M = in.subnets, C = in.channels, H = in.height, W = in.width;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "box_mix_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* src = in.data.const_data_ptr<scalar_t>();
    const int32_t* boxes_p = boxes_c.const_data_ptr<int32_t>();
    const opmath_t* w_in_p = w_in.const_data_ptr<opmath_t>();
    const opmath_t* w_out_p = w_out.const_data_ptr<opmath_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const opmath_t s = static_cast<opmath_t>(scale);
    // One task per (b, c, y) row in NCHW, per (b, y) row of pixels in NHWC.
    const bool nchw = in.layout == Layout::kChannelsFirst;
    const int64_t rows = nchw ? in.batch * C * H : in.batch * H;
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> weights(2 * M);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = nchw ? row / (C * H) : row / H;
        const int64_t y = row % H;
        const int64_t c = nchw ? (row / H) % C : 0;
        const Box box = detail::load_box(boxes_p, b, H, W);
        for (int64_t i = 0; i < M; ++i) {
          weights[i] = s * w_out_p[b * M + i];
          weights[M + i] = s * w_in_p[b * M + i];
        }
        const int64_t src_row = b * in.stride_batch + detail::slice_offset(in.layout, c, y, 0, C, H, W);
        scalar_t* out_row = dst + b * C * H * W + detail::slice_offset(in.layout, c, y, 0, C, H, W);
        const int64_t run_scale = nchw ? 1 : C;  // elements per pixel in this row
        for_each_run(box, y, W, [&](int64_t x0, int64_t x1, bool inside) {
          const opmath_t* w = weights.data() + (inside ? M : 0);
          for (int64_t k = x0 * run_scale; k < x1 * run_scale; ++k) {
            opmath_t acc = 0;
            for (int64_t i = 0; i < M; ++i) acc += w[i] * static_cast<opmath_t>(src[i * in.stride_subnet + src_row + k]);
            out_row[k] = static_cast<scalar_t>(acc);
          }
        });
      }
    });
  });
  return out;
}

at::Tensor box_mix_backward_cpu(const at::Tensor& grad_out, const at::Tensor& boxes, const at::Tensor& inside_weight,
                                const at::Tensor& outside_weight, double scale) {
  const FeatureArg g = feature_arg(grad_out, "grad_out");
  TORCH_CHECK_VALUE(inside_weight.dim() == 2, "inside_weight must have shape [B, M], got ", inside_weight.sizes());
  const int64_t M = inside_weight.size(1);
  TORCH_CHECK_VALUE(M >= 2, "inside_weight must have M >= 2 columns (one per subnetwork), got ", M);
  const at::Tensor boxes_c = boxes_arg(boxes, grad_out, "grad_out", g.batch, g.height, g.width);
  const auto opmath = opmath_dtype(grad_out.scalar_type());
  const at::Tensor w_in = weights_arg(inside_weight, "inside_weight", grad_out, "grad_out", g.batch, M, opmath);
  const at::Tensor w_out = weights_arg(outside_weight, "outside_weight", grad_out, "grad_out", g.batch, M, opmath);
  at::Tensor grad_x = empty_stacked(M, g.batch, g.channels, g.height, g.width, g.layout, grad_out.options());
  if (grad_x.numel() == 0) return grad_x;
  const int64_t C = g.channels, H = g.height, W = g.width, slice = C * H * W, stride_m = g.batch * slice;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "box_mix_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* src = g.data.const_data_ptr<scalar_t>();
    const int32_t* boxes_p = boxes_c.const_data_ptr<int32_t>();
    const opmath_t* w_in_p = w_in.const_data_ptr<opmath_t>();
    const opmath_t* w_out_p = w_out.const_data_ptr<opmath_t>();
    scalar_t* dst = grad_x.data_ptr<scalar_t>();
    const opmath_t s = static_cast<opmath_t>(scale);
    const bool nchw = g.layout == Layout::kChannelsFirst;
    const int64_t rows = nchw ? g.batch * C * H : g.batch * H;
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = nchw ? row / (C * H) : row / H;
        const int64_t y = row % H;
        const int64_t c = nchw ? (row / H) % C : 0;
        const Box box = detail::load_box(boxes_p, b, H, W);
        const int64_t offset = b * slice + detail::slice_offset(g.layout, c, y, 0, C, H, W);
        const int64_t run_scale = nchw ? 1 : C;
        for_each_run(box, y, W, [&](int64_t x0, int64_t x1, bool inside) {
          for (int64_t i = 0; i < M; ++i) {
            const opmath_t w = s * (inside ? w_in_p[b * M + i] : w_out_p[b * M + i]);
            scalar_t* out_row = dst + i * stride_m + offset;
            for (int64_t k = x0 * run_scale; k < x1 * run_scale; ++k)
              out_row[k] = static_cast<scalar_t>(w * static_cast<opmath_t>(src[offset + k]));
          }
        });
      }
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
