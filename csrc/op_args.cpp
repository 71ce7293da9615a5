#include "op_args.h"

#include <atomic>
#include <cmath>
#include <ostream>

namespace mixshare_ops {

namespace {
std::atomic<bool> g_value_checks{true};

// Whether values of `t` should be read on the host for validation.
bool should_check_values(const at::Tensor& t) { return t.device().is_cpu() || value_checks_enabled(); }
}  // namespace

namespace {
// Shapes and dtypes in messages as Python writes them (tuple(t.shape), t.dtype), so
// that a message reads the same from every backend.
struct PyShape {
  at::IntArrayRef sizes;
};
std::ostream& operator<<(std::ostream& out, const PyShape& shape) {
  out << "(";
  for (size_t d = 0; d < shape.sizes.size(); ++d) out << (d ? ", " : "") << shape.sizes[d];
  return out << (shape.sizes.size() == 1 ? ",)" : ")");
}
PyShape py_shape(const at::Tensor& t) { return PyShape{t.sizes()}; }

struct PyDtype {
  at::ScalarType dtype;
};
std::ostream& operator<<(std::ostream& out, const PyDtype& dtype) {
  return out << "torch." << c10::getDtypeNames(dtype.dtype).first;
}
PyDtype py_dtype(const at::Tensor& t) { return PyDtype{t.scalar_type()}; }
}  // namespace

bool value_checks_enabled() { return g_value_checks.load(); }

bool set_value_checks(bool enabled) { return g_value_checks.exchange(enabled); }

at::ScalarType opmath_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

void check_floating(const at::Tensor& t, const char* name) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, name,
              " must be a float16, bfloat16, float32 or float64 tensor, got ", PyDtype{dtype});
}

void check_same_device(const at::Tensor& t, const at::Tensor& like, const char* name, const char* like_name) {
  TORCH_CHECK_VALUE(t.device() == like.device(), name, " must be on the same device as ", like_name, " (", like.device(),
              "), got ", t.device());
}

namespace {
// A grid or feature size in [1, kMaxGridSize]; `name...` names it.
template <typename... Name>
void check_size(int64_t value, const Name&... name) {
  TORCH_CHECK_VALUE(value > 0 && value <= kMaxGridSize, name..., " must be in [1, ", kMaxGridSize,
                    "] (boxes are int32 pixel coordinates), got ", value);
}
}  // namespace

void check_positive_size(int64_t value, const char* name) { check_size(value, name); }

namespace {
// Whether dims [first, first + 3) of `t` (sizes C, H, W) are laid out as a
// dense channels_last slice. Size-1 dims may have any stride.
bool is_channels_last_slice(const at::Tensor& t, int64_t first) {
  const int64_t c = t.size(first), h = t.size(first + 1), w = t.size(first + 2);
  return (c == 1 || t.stride(first) == 1) && (w == 1 || t.stride(first + 2) == c) &&
         (h == 1 || t.stride(first + 1) == w * c);
}

bool is_channels_first_slice(const at::Tensor& t, int64_t first) {
  const int64_t c = t.size(first), h = t.size(first + 1), w = t.size(first + 2);
  return (w == 1 || t.stride(first + 2) == 1) && (h == 1 || t.stride(first + 1) == w) &&
         (c == 1 || t.stride(first) == h * w);
}
}  // namespace

namespace {

// A tensor the kernels cannot read in place is copied first; a broadcast
// (stride-0) view grows to its full size in that copy, so past this many
// bytes it is refused instead (MAX_BROADCAST_COPY_BYTES in mixshare_ops/_layout.py).
constexpr int64_t kMaxBroadcastCopyBytes = int64_t{1} << 30;

at::Tensor dense_copy(const at::Tensor& t, const char* name) {
  bool broadcast = false;
  for (int64_t d = 0; d < t.dim(); ++d) broadcast = broadcast || (t.stride(d) == 0 && t.size(d) > 1);
  const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
  TORCH_CHECK_VALUE(!broadcast || bytes <= kMaxBroadcastCopyBytes, name, " is a broadcast (stride-0) view of shape ",
                    py_shape(t), ": the kernels would copy it to ", bytes, " bytes, above the limit of ",
                    kMaxBroadcastCopyBytes, " (1 GiB); pass ", name, ".contiguous() to copy it anyway");
  return t.contiguous();
}

}  // namespace

FeatureArg feature_arg(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, name, " must be a 4-D [B, C, H, W] tensor, got ", t.dim(), " dims with shape ",
              py_shape(t));
  check_floating(t, name);
  check_size(t.size(2), "the height of ", name);
  check_size(t.size(3), "the width of ", name);
  FeatureArg arg;
  arg.batch = t.size(0);
  arg.channels = t.size(1);
  arg.height = t.size(2);
  arg.width = t.size(3);
  if (t.is_contiguous()) {
    arg.data = t;
    arg.layout = Layout::kChannelsFirst;
  } else if (t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    arg.data = t;
    arg.layout = Layout::kChannelsLast;
  } else {
    arg.data = dense_copy(t, name);
    arg.layout = Layout::kChannelsFirst;
  }
  return arg;
}

StackedArg stacked_arg(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 5, name, " must be a 5-D [M, B, C, H, W] tensor, got ", t.dim(), " dims with shape ",
              py_shape(t));
  check_floating(t, name);
  TORCH_CHECK_VALUE(t.size(0) >= 2, name, " must stack M >= 2 inputs along dim 0, got M = ", t.size(0));
  check_size(t.size(3), "the height of ", name);
  check_size(t.size(4), "the width of ", name);
  StackedArg arg;
  arg.subnets = t.size(0);
  arg.batch = t.size(1);
  arg.channels = t.size(2);
  arg.height = t.size(3);
  arg.width = t.size(4);
  if (is_channels_first_slice(t, 2)) {
    arg.data = t;
    arg.layout = Layout::kChannelsFirst;
  } else if (is_channels_last_slice(t, 2)) {
    arg.data = t;
    arg.layout = Layout::kChannelsLast;
  } else {
    arg.data = dense_copy(t, name);
    arg.layout = Layout::kChannelsFirst;
  }
  arg.stride_subnet = arg.data.stride(0);
  arg.stride_batch = arg.data.stride(1);
  return arg;
}

at::Tensor empty_features(int64_t batch, int64_t channels, int64_t height, int64_t width, Layout layout,
                          const at::TensorOptions& options) {
  const auto format = layout == Layout::kChannelsLast ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return at::empty({batch, channels, height, width}, options.memory_format(format));
}

at::Tensor empty_stacked(int64_t subnets, int64_t batch, int64_t channels, int64_t height, int64_t width,
                         Layout layout, const at::TensorOptions& options) {
  if (layout == Layout::kChannelsFirst) return at::empty({subnets, batch, channels, height, width}, options);
  return at::empty({subnets, batch, height, width, channels}, options).permute({0, 1, 4, 2, 3});
}

namespace {
// Row b of the boxes (on the host): inside [0, H] x [0, W] with top <= bottom and left <= right.
void check_box_row(const int32_t* row, int64_t b, int64_t height, int64_t width) {
  TORCH_CHECK_VALUE(row[0] >= 0 && row[1] >= 0 && row[0] <= row[2] && row[1] <= row[3] && row[2] <= height &&
                        row[3] <= width,
                    "boxes[", b, "] = (", row[0], ", ", row[1], ", ", row[2], ", ", row[3],
                    ") must satisfy 0 <= top <= bottom <= ", height, " and 0 <= left <= right <= ", width);
}
}  // namespace

at::Tensor boxes_arg(const at::Tensor& boxes, const at::Tensor& like, const char* like_name, int64_t batch,
                     int64_t height, int64_t width) {
  TORCH_CHECK_TYPE(boxes.scalar_type() == at::kInt, "boxes must be an int32 tensor, got ", py_dtype(boxes));
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, "boxes must have shape [B, 4], got ", py_shape(boxes));
  TORCH_CHECK_VALUE(boxes.size(0) == batch, "boxes must have one row per sample: expected B = ", batch, " (from ",
              like_name, "), got ", boxes.size(0));
  check_same_device(boxes, like, "boxes", like_name);
  at::Tensor out = boxes.contiguous();
  if (batch == 0 || !should_check_values(out)) return out;
  if (out.device().is_cpu()) {
    const int32_t* row = out.const_data_ptr<int32_t>();
    for (int64_t b = 0; b < batch; ++b, row += 4) check_box_row(row, b, height, width);
    return out;
  }
  // On the device: one reduction and one synchronisation; the first bad row is copied to the host for the message.
  const auto top = out.select(1, 0), left = out.select(1, 1), bottom = out.select(1, 2), right = out.select(1, 3);
  const auto bad = (top < 0) | (left < 0) | (top > bottom) | (left > right) | (bottom > height) | (right > width);
  if (bad.any().item<bool>()) {
    const int64_t b = bad.nonzero()[0][0].item<int64_t>();
    const at::Tensor row = out[b].cpu();
    check_box_row(row.const_data_ptr<int32_t>(), b, height, width);
  }
  return out;
}

at::Tensor mask_boxes_arg(const at::Tensor& boxes, int64_t height, int64_t width) {
  check_positive_size(height, "height");
  check_positive_size(width, "width");
  TORCH_CHECK_VALUE(boxes.dim() == 2, "boxes must have shape [B, 4], got ", py_shape(boxes));
  return boxes_arg(boxes, boxes, "boxes", boxes.size(0), height, width);
}

at::Tensor weights_arg(const at::Tensor& weights, const char* name, const at::Tensor& like, const char* like_name,
                       int64_t batch, int64_t subnets, at::ScalarType opmath) {
  TORCH_CHECK_VALUE(weights.dim() == 2 && weights.size(0) == batch && weights.size(1) == subnets, name,
              " must have shape [B, M] = [", batch, ", ", subnets, "], got ", py_shape(weights));
  check_floating(weights, name);
  check_same_device(weights, like, name, like_name);
  // The ops differentiate with respect to the features only: a weight gradient would be dropped.
  TORCH_CHECK_VALUE(!weights.requires_grad(), name,
                    " must not require grad: the mixing ops are differentiable with respect to the features only");
  return weights.to(opmath).contiguous();
}

int64_t subnets_arg(const at::Tensor& inside_weight) {
  TORCH_CHECK_VALUE(inside_weight.dim() == 2, "inside_weight must have shape [B, M], got ", py_shape(inside_weight));
  const int64_t subnets = inside_weight.size(1);
  TORCH_CHECK_VALUE(subnets >= 2, "inside_weight must have M >= 2 columns (one per subnetwork), got ", subnets);
  return subnets;
}

UnmixWeights unmix_weights_arg(const std::optional<at::Tensor>& inside_weight,
                               const std::optional<at::Tensor>& outside_weight, const at::Tensor& like,
                               const char* like_name, int64_t batch, at::ScalarType opmath) {
  TORCH_CHECK_VALUE(inside_weight.has_value() == outside_weight.has_value(),
              "inside_weight and outside_weight must be given together or both left out (default M = 2)");
  UnmixWeights out;
  if (!inside_weight.has_value()) {
    out.subnets = 2;
    return out;
  }
  out.subnets = subnets_arg(*inside_weight);
  out.inside = weights_arg(*inside_weight, "inside_weight", like, like_name, batch, out.subnets, opmath);
  out.outside = weights_arg(*outside_weight, "outside_weight", like, like_name, batch, out.subnets, opmath);
  return out;
}

void check_scale(double scale) { TORCH_CHECK_VALUE(std::isfinite(scale), "scale must be finite, got ", scale); }

void check_unmix_scalars(int64_t box_height, int64_t box_width, int64_t height, int64_t width, double ratio,
                         int64_t channels, int64_t num_channels) {
  check_positive_size(box_height, "box_size[0]");
  check_positive_size(box_width, "box_size[1]");
  TORCH_CHECK_VALUE(box_height >= height && box_width >= width, "box_size must be at least the feature size (", height,
              ", ", width, "), got (", box_height, ", ", box_width, ")");
  TORCH_CHECK_VALUE(ratio >= 0.0 && ratio <= 1.0, "ratio must be in [0, 1], got ", ratio);
  TORCH_CHECK_VALUE(channels >= 0 && channels <= num_channels, "channels must be in [0, C] = [0, ", num_channels,
              "], got ", channels);
}

BoxSampleArg box_sample_arg(const at::Tensor& lam, const at::Tensor& center, int64_t height, int64_t width,
                            bool check_values) {
  check_positive_size(height, "height");
  check_positive_size(width, "width");
  TORCH_CHECK_VALUE(lam.dim() == 1, "lam must be a 1-D [B] tensor, got shape ", py_shape(lam));
  check_floating(lam, "lam");
  TORCH_CHECK_VALUE(center.dim() == 2 && center.size(0) == lam.size(0) && center.size(1) == 2,
              "center must have shape [B, 2] = [", lam.size(0), ", 2], got ", py_shape(center));
  check_floating(center, "center");
  check_same_device(center, lam, "center", "lam");
  const auto compute = (lam.scalar_type() == at::kDouble || center.scalar_type() == at::kDouble) ? at::kDouble
                                                                                                  : at::kFloat;
  BoxSampleArg arg{lam.to(compute).contiguous(), center.to(compute).contiguous()};
  if (check_values && lam.numel() > 0 && should_check_values(lam)) {
    // Written so that NaN fails both checks.
    TORCH_CHECK_VALUE(at::logical_and(arg.lam >= 0, arg.lam <= 1).all().item<bool>(),
                "lam must lie in [0, 1] (no NaN)");
    TORCH_CHECK_VALUE(at::logical_and(arg.center >= 0, arg.center < 1).all().item<bool>(),
                "center must lie in [0, 1) (no NaN)");
  }
  return arg;
}

PoolGradArg pool_grad_arg(const at::Tensor& grad_out, const at::Tensor& boxes,
                          const std::optional<at::Tensor>& inside_weight,
                          const std::optional<at::Tensor>& outside_weight, int64_t box_height, int64_t box_width,
                          double ratio, int64_t channels, c10::string_view normalize, int64_t height, int64_t width) {
  TORCH_CHECK_VALUE(grad_out.dim() == 3, "grad_out must be a 3-D [M, B, C] tensor, got shape ", py_shape(grad_out));
  check_floating(grad_out, "grad_out");
  check_positive_size(height, "height");
  check_positive_size(width, "width");
  const int64_t batch = grad_out.size(1);
  check_unmix_scalars(box_height, box_width, height, width, ratio, channels, grad_out.size(2));
  PoolGradArg arg;
  arg.masked = parse_normalize(std::string(normalize));
  arg.boxes = boxes_arg(boxes, grad_out, "grad_out", batch, box_height, box_width);
  arg.weights = unmix_weights_arg(inside_weight, outside_weight, grad_out, "grad_out", batch,
                                  opmath_dtype(grad_out.scalar_type()));
  TORCH_CHECK_VALUE(grad_out.size(0) == arg.weights.subnets, "grad_out must have M = ", arg.weights.subnets,
                    " (from the weights) along dim 0, got ", grad_out.size(0));
  return arg;
}

bool parse_normalize(const std::string& normalize) {
  TORCH_CHECK_VALUE(normalize == "mean" || normalize == "masked", "normalize must be \"mean\" or \"masked\", got '",
                    normalize, "'");
  return normalize == "masked";
}

}  // namespace mixshare_ops
