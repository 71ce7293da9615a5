// CPU helper shared by the unmixing kernels: the applied masks of one sample.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "../box_math.h"

namespace mixshare_ops {
namespace cpu {

// Data pointer of optional weights; null (the default weights) if absent.
template <typename T>
const T* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// Fills masks[i * h * w + p * w + q] with subnetwork i's applied mask
// m_i + ratio * (1 - m_i) at feature cell (p, q) of sample b.
template <typename T>
void fill_unmix_masks(const int32_t* boxes, const T* inside_weight, const T* outside_weight, int64_t b,
                      int64_t subnets, int64_t box_h, int64_t box_w, int64_t h, int64_t w, T ratio, T* masks) {
  for (int64_t i = 0; i < subnets; ++i) {
    const auto params =
        detail::unmix_params(boxes, inside_weight, outside_weight, b, i, subnets, box_h, box_w, h, w, ratio);
    for (int64_t p = 0; p < h; ++p)
      for (int64_t q = 0; q < w; ++q) masks[(i * h + p) * w + q] = params.mask(p, q);
  }
}

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
