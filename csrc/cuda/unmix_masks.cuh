// CUDA helpers shared by the unmixing kernels (the counterpart of
// cpu/unmix_masks.h): a table of the applied masks of every (subnetwork,
// sample) and the pooling denominators derived from it.
//
// The mask of one feature cell costs several 64-bit divisions
// (detail::UnmixParams::mask), far too much to recompute per feature element
// of a bandwidth-bound kernel, so it is computed once per (i, b, cell) into a
// small opmath table [M, B, h * w] that the element kernels then read (it is
// C times smaller than the features and stays in L2).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

#include "../box_math.h"
#include "../op_args.h"
#include "cuda_utils.cuh"

namespace mixshare_ops {
namespace cuda {

// masks[(i * B + b) * h * w + p * w + q] = applied mask of subnetwork i at
// feature cell (p, q) of sample b. Grid: y over the M * B rows, x over cells.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    unmix_mask_table_kernel(const int32_t* __restrict__ boxes, const T* __restrict__ inside_weight,
                            const T* __restrict__ outside_weight, int64_t subnets, int64_t batch, int64_t box_h,
                            int64_t box_w, int64_t h, int64_t w, T ratio, T* __restrict__ masks) {
  const int64_t cells = h * w, rows = subnets * batch;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t i = row / batch, b = row % batch;
    const auto params =
        detail::unmix_params(boxes, inside_weight, outside_weight, b, i, subnets, box_h, box_w, h, w, ratio);
    T* mask_row = masks + row * cells;
    for (int64_t cell = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; cell < cells;
         cell += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      int64_t c, p, q;
      detail::split_slice_index(Layout::kChannelsFirst, cell, 1, h, w, c, p, q);
      mask_row[cell] = params.mask(p, q);
    }
  }
}

// inv_denom[row] = 1 / denominator of mask row `row` (one block per row):
// "masked": the row's sum, or the number of cells where that sum is 0;
// "mean": the number of cells. Shared memory holds one partial sum per warp.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    inv_denominator_kernel(const T* __restrict__ masks, int64_t rows, int64_t cells, bool masked,
                           T* __restrict__ inv_denom) {
  __shared__ T partial[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {  // block-uniform
    T denom = static_cast<T>(cells);
    if (masked) {  // uniform
      T sum = 0;
      for (int64_t k = threadIdx.x; k < cells; k += blockDim.x) sum += masks[row * cells + k];
      sum = warp_sum(sum);
      __syncthreads();  // thread 0 has finished reading the previous row's partials
      if (lane == 0) partial[warp] = sum;
      __syncthreads();
      if (threadIdx.x == 0) {
        T total = 0;
        for (int k = 0; k < kThreads / 32; ++k) total += partial[k];
        if (!(total == T(0))) denom = total;  // NaN stays NaN, as on CPU
      }
    }
    if (threadIdx.x == 0) inv_denom[row] = T(1) / denom;
  }
}

// The [M, B, h * w] mask table (opmath T) of the given boxes and weights.
template <typename T>
at::Tensor unmix_mask_table(const at::Tensor& boxes, const UnmixWeights& wts, int64_t batch, int64_t box_h,
                            int64_t box_w, int64_t h, int64_t w, T ratio, cudaStream_t stream) {
  const int64_t subnets = wts.subnets, cells = h * w, rows = subnets * batch;
  at::Tensor masks = at::empty({subnets, batch, cells}, boxes.options().dtype(c10::CppTypeToScalarType<T>::value));
  if (masks.numel() == 0) return masks;
  unmix_mask_table_kernel<T><<<sample_grid(cells, rows), kThreads, 0, stream>>>(
      boxes.const_data_ptr<int32_t>(), optional_ptr<T>(wts.inside), optional_ptr<T>(wts.outside), subnets, batch,
      box_h, box_w, h, w, ratio, masks.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return masks;
}

// [M, B] reciprocal pooling denominators of a mask table.
template <typename T>
at::Tensor inv_denominators(const at::Tensor& masks, bool masked, cudaStream_t stream) {
  const int64_t rows = masks.size(0) * masks.size(1), cells = masks.size(2);
  at::Tensor inv_denom = at::empty({masks.size(0), masks.size(1)}, masks.options());
  if (inv_denom.numel() == 0) return inv_denom;
  inv_denominator_kernel<T><<<flat_grid(rows), kThreads, 0, stream>>>(masks.const_data_ptr<T>(), rows, cells, masked,
                                                                      inv_denom.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return inv_denom;
}

}  // namespace cuda
}  // namespace mixshare_ops
