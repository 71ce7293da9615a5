// Argument checking and normalisation shared by the CPU and CUDA entry points.
//
// Every op's entry point validates its arguments here (each message names the
// argument and what was expected; TORCH_CHECK_TYPE raises TypeError and
// TORCH_CHECK_VALUE ValueError in Python, as the Python wrappers do), then hands the kernels
// tensors in one of the two supported memory layouts and weights in the
// op's opmath dtype.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "box_math.h"

namespace mixshare_ops {

using detail::Layout;

// Value checks (box coordinates, lam and centre ranges) read tensor values.
// On CPU that is free and always done; on CUDA it costs a host-device
// synchronisation, so it can be switched off (the kernels clamp boxes to the
// grid either way, so no memory is ever touched out of bounds).
// The flag is the one switch of every backend: Python reads and sets it through
// the _value_checks_enabled and _set_value_checks operators.
bool value_checks_enabled();
bool set_value_checks(bool enabled);  // returns the previous setting

// float64 -> float64, everything else -> float32.
at::ScalarType opmath_dtype(at::ScalarType dtype);

void check_floating(const at::Tensor& t, const char* name);
// Largest grid or feature height and width: box coordinates are int32.
constexpr int64_t kMaxGridSize = 2147483647;  // 2^31 - 1
// A grid or feature size: in [1, kMaxGridSize].
void check_positive_size(int64_t value, const char* name);
void check_same_device(const at::Tensor& t, const at::Tensor& like, const char* name, const char* like_name);
// box_mix's scale: finite.
void check_scale(double scale);

// A 4-D [B, C, H, W] tensor in NCHW-contiguous or channels_last memory
// (anything else is made contiguous).
struct FeatureArg {
  at::Tensor data;
  Layout layout;
  int64_t batch, channels, height, width;
};
FeatureArg feature_arg(const at::Tensor& t, const char* name);

// A 5-D [M, B, C, H, W] tensor whose [C, H, W] slices are all NCHW-contiguous
// or all channels_last, with any strides over M and B.
struct StackedArg {
  at::Tensor data;
  Layout layout;
  int64_t subnets, batch, channels, height, width;
  int64_t stride_subnet, stride_batch;
};
StackedArg stacked_arg(const at::Tensor& t, const char* name);

// Fresh outputs in a given slice layout.
at::Tensor empty_features(int64_t batch, int64_t channels, int64_t height, int64_t width, Layout layout,
                          const at::TensorOptions& options);
at::Tensor empty_stacked(int64_t subnets, int64_t batch, int64_t channels, int64_t height, int64_t width,
                         Layout layout, const at::TensorOptions& options);

// int32 [B, 4] boxes on `like`'s device, every box inside [0, H] x [0, W]
// with top <= bottom and left <= right. Returns a contiguous tensor.
at::Tensor boxes_arg(const at::Tensor& boxes, const at::Tensor& like, const char* like_name, int64_t batch,
                     int64_t height, int64_t width);

// cutmix_mask's arguments: a height x width grid and boxes [B, 4] as boxes_arg checks them.
at::Tensor mask_boxes_arg(const at::Tensor& boxes, int64_t height, int64_t width);

// Per-sample subnetwork weights [B, M] on `like`'s device, converted to
// `opmath` and made contiguous.
at::Tensor weights_arg(const at::Tensor& weights, const char* name, const at::Tensor& like, const char* like_name,
                       int64_t batch, int64_t subnets, at::ScalarType opmath);

// M, the number of subnetworks, from inside_weight [B, M]: M >= 2.
int64_t subnets_arg(const at::Tensor& inside_weight);

// Optional unmixing weights: both given ([B, M], M >= 2) or both absent
// (default M = 2). Returns M and the converted weights (undefined if absent).
struct UnmixWeights {
  int64_t subnets;
  at::Tensor inside, outside;
};
UnmixWeights unmix_weights_arg(const std::optional<at::Tensor>& inside_weight,
                               const std::optional<at::Tensor>& outside_weight, const at::Tensor& like,
                               const char* like_name, int64_t batch, at::ScalarType opmath);

// Checks shared by every unmixing op: box grid at least the feature size,
// ratio in [0, 1], channels in [0, C].
void check_unmix_scalars(int64_t box_height, int64_t box_width, int64_t height, int64_t width, double ratio,
                         int64_t channels, int64_t num_channels);

// lam [B] in [0, 1] and center [B, 2] in [0, 1), on one device, converted
// to the compute dtype (float64 if either is float64, float32 otherwise).
struct BoxSampleArg {
  at::Tensor lam, center;
};
// check_values = false skips the value checks (for values valid by construction).
BoxSampleArg box_sample_arg(const at::Tensor& lam, const at::Tensor& center, int64_t height, int64_t width,
                            bool check_values = true);

// The arguments of cutmix_unmix_pool_backward: grad_out [M, B, C] floating,
// the output grid height x width, the unmixing scalars, normalize, boxes and
// weights with M matching grad_out.
struct PoolGradArg {
  at::Tensor boxes;
  UnmixWeights weights;
  bool masked;
};
PoolGradArg pool_grad_arg(const at::Tensor& grad_out, const at::Tensor& boxes,
                          const std::optional<at::Tensor>& inside_weight,
                          const std::optional<at::Tensor>& outside_weight, int64_t box_height, int64_t box_width,
                          double ratio, int64_t channels, c10::string_view normalize, int64_t height, int64_t width);

// "mean" -> false, "masked" -> true; anything else is an error.
bool parse_normalize(const std::string& normalize);

}  // namespace mixshare_ops
