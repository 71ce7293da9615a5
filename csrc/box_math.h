// Index and box math shared by the CPU and CUDA kernels.
//
// Everything here is header-only, free of ATen, and compiles both as host C++
// and as CUDA device code, so the CPU tests exercise exactly the arithmetic the
// GPU runs. Conventions (see mixshare_ops/reference.py, the specification):
//   * boxes: int32 [B, 4] rows (top, left, bottom, right), half-open, on an
//     H x W grid; an empty box is legal;
//   * weights: [B, M] per-sample, per-subnetwork weights inside / outside the
//     box, already converted to the op's "opmath" type (float or double);
//   * "opmath" is double for double tensors and float otherwise.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MIXSHARE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MIXSHARE_HOST_DEVICE inline
#endif

namespace mixshare_ops {
namespace detail {

using std::floor;
using std::sqrt;

template <typename T>
MIXSHARE_HOST_DEVICE T clamp_to(T v, T lo, T hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// A box clamped to its grid: 0 <= top <= bottom <= H, 0 <= left <= right <= W.
struct Box {
  int64_t top, left, bottom, right;

  MIXSHARE_HOST_DEVICE bool contains(int64_t y, int64_t x) const {
    return y >= top && y < bottom && x >= left && x < right;
  }
  MIXSHARE_HOST_DEVICE int64_t area() const { return (bottom - top) * (right - left); }
};

// Reads row b of an int32 [B, 4] box tensor. Values are validated on the host
// before a kernel runs (unless value checks are disabled); clamping here
// keeps every kernel memory-safe whatever the box values are.
MIXSHARE_HOST_DEVICE Box load_box(const int32_t* boxes, int64_t b, int64_t height, int64_t width) {
  const int32_t* row = boxes + 4 * b;
  Box box;
  box.top = clamp_to<int64_t>(row[0], 0, height);
  box.left = clamp_to<int64_t>(row[1], 0, width);
  box.bottom = clamp_to<int64_t>(row[2], box.top, height);
  box.right = clamp_to<int64_t>(row[3], box.left, width);
  return box;
}

// floor(u * size) for a uniform u in [0, 1), clamped into [0, size - 1]; NaN
// maps to 0 so that no float-to-int conversion is undefined.
template <typename T>
MIXSHARE_HOST_DEVICE int64_t uniform_to_index(T u, int64_t size) {
  T v = u * static_cast<T>(size);
  if (!(v >= T(0))) v = T(0);
  if (v > static_cast<T>(size - 1)) v = static_cast<T>(size - 1);
  return static_cast<int64_t>(floor(v));
}

// The MixMo/CutMix reference rule: cut = int(size * sqrt(lam)), centre
// c = floor(u * size), [clip(c - cut // 2), clip(c + cut // 2)).
// The cut size is computed in double whatever T is, as the official MixMo code
// does in numpy float64: lam (exact in double) clamped into [0, 1] (NaN -> 0),
// then trunc(double(size) * sqrt(lam)). Both operations are correctly rounded:
// IEEE 754 requires it of sqrt, which compiles to sqrtsd / vsqrtpd on x86
// hosts and to sqrt.rn.f64 in device code (the build uses no fast-math flag),
// so the cut equals Python's int(size * math.sqrt(lam)). The reference backend
// cannot rely on torch.sqrt the same way (see reference.sqrt_rn).
// The centre is computed in T.
template <typename T>
MIXSHARE_HOST_DEVICE Box cutmix_box(T lam, T center_row, T center_col, int64_t height, int64_t width) {
  double lam_d = static_cast<double>(lam);
  if (!(lam_d >= 0.0)) lam_d = 0.0;
  if (lam_d > 1.0) lam_d = 1.0;
  const double cut_frac = sqrt(lam_d);
  const int64_t cut_h = static_cast<int64_t>(static_cast<double>(height) * cut_frac);
  const int64_t cut_w = static_cast<int64_t>(static_cast<double>(width) * cut_frac);
  const int64_t cy = uniform_to_index(center_row, height);
  const int64_t cx = uniform_to_index(center_col, width);
  Box box;
  box.top = clamp_to<int64_t>(cy - cut_h / 2, 0, height);
  box.bottom = clamp_to<int64_t>(cy + cut_h / 2, 0, height);
  box.left = clamp_to<int64_t>(cx - cut_w / 2, 0, width);
  box.right = clamp_to<int64_t>(cx + cut_w / 2, 0, width);
  return box;
}

// adaptive_avg_pool2d's window along one axis: output cell i of out_size
// covers input positions [start, end) of in_size.
MIXSHARE_HOST_DEVICE int64_t adaptive_start(int64_t i, int64_t out_size, int64_t in_size) {
  return (i * in_size) / out_size;
}
MIXSHARE_HOST_DEVICE int64_t adaptive_end(int64_t i, int64_t out_size, int64_t in_size) {
  return ((i + 1) * in_size + out_size - 1) / out_size;
}

MIXSHARE_HOST_DEVICE int64_t overlap(int64_t a0, int64_t a1, int64_t b0, int64_t b1) {
  const int64_t lo = a0 > b0 ? a0 : b0;
  const int64_t hi = a1 < b1 ? a1 : b1;
  return hi > lo ? hi - lo : 0;
}

// Weight of subnetwork i for sample b; a null pointer means the default M = 2
// weights: the box belongs to subnetwork 0 and its complement to subnetwork 1.
template <typename T>
MIXSHARE_HOST_DEVICE T subnet_weight(const T* weights, int64_t b, int64_t i, int64_t num_subnets, bool inside) {
  if (weights == nullptr) return (i == 0) == inside ? T(1) : T(0);
  return weights[b * num_subnets + i];
}

// The fraction of a window of rows x cols cells that lies in the box, which
// covers covered_rows x covered_cols of them (see overlap).
template <typename T>
MIXSHARE_HOST_DEVICE T covered_fraction(int64_t covered_rows, int64_t covered_cols, int64_t rows, int64_t cols) {
  return static_cast<T>(covered_rows * covered_cols) / static_cast<T>(rows * cols);
}

// The weight map averaged over a window whose `fraction` (covered / cells)
// lies in the box: exactly `outside` when no cell is covered and `inside`
// when all are, so a non-finite weight of the side the window does not touch
// never enters (as averaging the weight map itself gives).
template <typename T>
MIXSHARE_HOST_DEVICE T window_weight(T inside, T outside, T fraction) {
  return fraction == T(0) ? outside : (fraction == T(1) ? inside : outside + (inside - outside) * fraction);
}

// Fadeout: the applied mask m + r (1 - m) of a mask value m.
template <typename T>
MIXSHARE_HOST_DEVICE T fadeout(T m, T ratio) {
  return m + ratio * (T(1) - m);
}

// The applied mask of a window whose `fraction` lies in the box.
template <typename T>
MIXSHARE_HOST_DEVICE T applied_mask(T inside, T outside, T fraction, T ratio) {
  return fadeout(window_weight(inside, outside, fraction), ratio);
}

// The per-sample quantities every unmixing kernel needs for one subnetwork.
template <typename T>
struct UnmixParams {
  Box box;          // on the box grid
  T inside;         // subnetwork weight inside the box
  T outside;        // and outside it
  int64_t box_h, box_w, h, w;
  T ratio;          // fadeout r

  // Applied mask at feature cell (p, q): m + r (1 - m), where m is the weight
  // map averaged over the cell's adaptive_avg_pool2d window.
  MIXSHARE_HOST_DEVICE T mask(int64_t p, int64_t q) const {
    const int64_t y0 = adaptive_start(p, h, box_h), y1 = adaptive_end(p, h, box_h);
    const int64_t x0 = adaptive_start(q, w, box_w), x1 = adaptive_end(q, w, box_w);
    const T fraction = covered_fraction<T>(overlap(y0, y1, box.top, box.bottom), overlap(x0, x1, box.left, box.right),
                                           y1 - y0, x1 - x0);
    return applied_mask(inside, outside, fraction, ratio);
  }
};

template <typename T>
MIXSHARE_HOST_DEVICE UnmixParams<T> unmix_params(
    const int32_t* boxes, const T* inside_weight, const T* outside_weight, int64_t b, int64_t i,
    int64_t num_subnets, int64_t box_h, int64_t box_w, int64_t h, int64_t w, T ratio) {
  UnmixParams<T> p;
  p.box = load_box(boxes, b, box_h, box_w);
  p.inside = subnet_weight(inside_weight, b, i, num_subnets, true);
  p.outside = subnet_weight(outside_weight, b, i, num_subnets, false);
  p.box_h = box_h;
  p.box_w = box_w;
  p.h = h;
  p.w = w;
  p.ratio = ratio;
  return p;
}

// Memory layout of the [C, H, W] slices of a feature tensor: NCHW-style
// (contiguous) or NHWC-style (channels_last). Offsets within one slice:
enum class Layout : int { kChannelsFirst = 0, kChannelsLast = 1 };

MIXSHARE_HOST_DEVICE int64_t slice_offset(Layout layout, int64_t c, int64_t y, int64_t x, int64_t channels,
                                          int64_t height, int64_t width) {
  return layout == Layout::kChannelsFirst ? (c * height + y) * width + x : (y * width + x) * channels + c;
}

// Splits an index within one [C, H, W] slice (in memory order) into (c, y, x).
MIXSHARE_HOST_DEVICE void split_slice_index(Layout layout, int64_t index, int64_t channels, int64_t height,
                                            int64_t width, int64_t& c, int64_t& y, int64_t& x) {
  if (layout == Layout::kChannelsFirst) {
    x = index % width;
    index /= width;
    y = index % height;
    c = index / height;
  } else {
    c = index % channels;
    index /= channels;
    x = index % width;
    y = index / width;
  }
}

}  // namespace detail
}  // namespace mixshare_ops
