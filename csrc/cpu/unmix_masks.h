// CPU helper shared by the unmixing kernels: the applied masks of one sample.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "../box_math.h"

namespace mixshare_ops {
namespace cpu {

// Data pointer of optional weights; null (the default weights) if absent.
template <typename T>
const T* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// The applied masks m_i + ratio * (1 - m_i) of every subnetwork i at every
// feature cell of one sample at a time, by the formulas of box_math.h that
// detail::UnmixParams::mask uses (so the same bits), with the integer work
// hoisted: the adaptive-pool windows are fixed by the sizes, the box
// overlaps are computed once per row and column, and the covered fraction
// of a cell is shared by all subnetworks.
template <typename T>
class UnmixMasks {
 public:
  UnmixMasks(const int32_t* boxes, const T* inside_weight, const T* outside_weight, int64_t subnets, int64_t box_h,
             int64_t box_w, int64_t h, int64_t w, T ratio)
      : boxes_(boxes), inside_(inside_weight), outside_(outside_weight), subnets_(subnets), box_h_(box_h),
        box_w_(box_w), h_(h), w_(w), ratio_(ratio), row_start_(h), row_end_(h), col_start_(w), col_end_(w),
        row_cover_(h), col_cover_(w), fraction_(h * w), masks_(subnets * h * w) {
    for (int64_t p = 0; p < h; ++p) {
      row_start_[p] = detail::adaptive_start(p, h, box_h);
      row_end_[p] = detail::adaptive_end(p, h, box_h);
    }
    for (int64_t q = 0; q < w; ++q) {
      col_start_[q] = detail::adaptive_start(q, w, box_w);
      col_end_[q] = detail::adaptive_end(q, w, box_w);
    }
  }

  // Computes the masks of sample b.
  void fill(int64_t b) {
    const detail::Box box = detail::load_box(boxes_, b, box_h_, box_w_);
    for (int64_t p = 0; p < h_; ++p) row_cover_[p] = detail::overlap(row_start_[p], row_end_[p], box.top, box.bottom);
    for (int64_t q = 0; q < w_; ++q)
      col_cover_[q] = detail::overlap(col_start_[q], col_end_[q], box.left, box.right);
    for (int64_t p = 0; p < h_; ++p) {
      const int64_t rows = row_end_[p] - row_start_[p];
      T* fraction = fraction_.data() + p * w_;
      for (int64_t q = 0; q < w_; ++q)
        fraction[q] = detail::covered_fraction<T>(row_cover_[p], col_cover_[q], rows, col_end_[q] - col_start_[q]);
    }
    const int64_t hw = h_ * w_;
    for (int64_t i = 0; i < subnets_; ++i) {
      const T inside = detail::subnet_weight(inside_, b, i, subnets_, true);
      const T outside = detail::subnet_weight(outside_, b, i, subnets_, false);
      const T* __restrict fraction = fraction_.data();
      T* __restrict mask = masks_.data() + i * hw;
      for (int64_t k = 0; k < hw; ++k) mask[k] = detail::applied_mask(inside, outside, fraction[k], ratio_);
    }
  }

  // Subnetwork i's mask of the last filled sample, [h * w] row-major.
  const T* mask(int64_t i) const { return masks_.data() + i * h_ * w_; }

 private:
  const int32_t* boxes_;
  const T* inside_;
  const T* outside_;
  int64_t subnets_, box_h_, box_w_, h_, w_;
  T ratio_;
  std::vector<int64_t> row_start_, row_end_, col_start_, col_end_, row_cover_, col_cover_;
  std::vector<T> fraction_, masks_;
};

// The "masked" pooling denominator: the sum of one applied mask, or h * w
// where that sum is 0.
template <typename T>
T masked_denominator(const T* mask, int64_t cells) {
  T sum = 0;
  for (int64_t k = 0; k < cells; ++k) sum += mask[k];
  return sum == T(0) ? static_cast<T>(cells) : sum;
}

}  // namespace cpu
}  // namespace mixshare_ops
