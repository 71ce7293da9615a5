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
#include <type_traits>

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

// How the VEC elements of one chunk (VEC consecutive elements, in memory
// order, of a [C, h, w] slice) map to mask-table cells and channels. The two
// special kinds let a chunk read its masks with one vector load (kPlane) or
// one scalar load (kPixel) per subnetwork instead of VEC scattered loads.
enum class ChunkKind : int {
  kGeneric = 0,  // any (c, y, x) per element (the chunk may cross rows, channels)
  kPlane = 1,    // NCHW, cells % VEC == 0: one channel, VEC consecutive cells
  kPixel = 2,    // channels_last, C % VEC == 0: one cell, VEC consecutive channels
};

template <int VEC, ChunkKind KIND>
struct Chunk {
  static constexpr int kStored = KIND == ChunkKind::kGeneric ? VEC : 1;
  int64_t c[kStored], cell[kStored];  // per element (kGeneric) or of element 0

  __device__ __forceinline__ Chunk(Layout layout, int64_t k0, int64_t num_channels, int64_t h, int64_t w) {
    int64_t cc, y, x;
    detail::split_slice_index(layout, k0, num_channels, h, w, cc, y, x);
#pragma unroll
    for (int j = 0; j < kStored; ++j) {
      c[j] = cc;
      cell[j] = y * w + x;
      if (j + 1 < kStored) next_in_slice(layout, cc, y, x, num_channels, h, w);
    }
  }

  __device__ __forceinline__ int64_t channel(int j) const {
    return KIND == ChunkKind::kGeneric ? c[j] : (KIND == ChunkKind::kPlane ? c[0] : c[0] + j);
  }

  // out[j] = row[cell of element j] where use[j], else 0 (row: one mask-table
  // row; kPlane requires row + cell[0] to be VEC-aligned, see dispatch_chunk).
  template <typename T>
  __device__ __forceinline__ void gather_cells(const T* row, const bool (&use)[VEC], T (&out)[VEC]) const {
    if constexpr (KIND == ChunkKind::kGeneric) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) out[j] = use[j] ? row[cell[j]] : T(0);
    } else if constexpr (KIND == ChunkKind::kPlane) {
      if (use[0]) {  // one channel: `use` is uniform
        const auto v = load_vec<VEC>(row + cell[0]);
#pragma unroll
        for (int j = 0; j < VEC; ++j) out[j] = v.val[j];
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) out[j] = T(0);
      }
    } else {
      bool any = false;
#pragma unroll
      for (int j = 0; j < VEC; ++j) any = any || use[j];
      const T v = any ? row[cell[0]] : T(0);
#pragma unroll
      for (int j = 0; j < VEC; ++j) out[j] = use[j] ? v : T(0);
    }
  }

  // out[j] = row[channel of element j] where use[j], else 0 (row: C values
  // of one (i, b); kPixel requires row + c[0] to be VEC-aligned).
  template <typename T>
  __device__ __forceinline__ void gather_channels(const T* row, const bool (&use)[VEC], T (&out)[VEC]) const {
    if constexpr (KIND == ChunkKind::kGeneric) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) out[j] = use[j] ? row[c[j]] : T(0);
    } else if constexpr (KIND == ChunkKind::kPlane) {
      const T v = use[0] ? row[c[0]] : T(0);  // one channel: `use` is uniform
#pragma unroll
      for (int j = 0; j < VEC; ++j) out[j] = v;
    } else {
      bool any = false;
#pragma unroll
      for (int j = 0; j < VEC; ++j) any = any || use[j];
      if (any) {
        const auto v = load_vec<VEC>(row + c[0]);
#pragma unroll
        for (int j = 0; j < VEC; ++j) out[j] = use[j] ? v.val[j] : T(0);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) out[j] = T(0);
      }
    }
  }
};

// Calls fn(std::integral_constant<int, V>(), std::integral_constant<ChunkKind, K>())
// for the chunk width V (kVec if `vectorize`, else 1) and the chunk kind K
// that the layout and sizes allow. The special kinds also need the opmath
// tables (mask table, per-channel rows) VEC * sizeof(opmath)-aligned at
// every row: rows start at multiples of cells (kPlane) or C (kPixel), both
// then multiples of VEC, and CUDA allocations are 256-byte aligned.
template <int kVec, typename Fn>
void dispatch_chunk(bool vectorize, Layout layout, int64_t num_channels, int64_t cells, Fn&& fn) {
  using K = ChunkKind;
  if (!vectorize) {
    fn(std::integral_constant<int, 1>(), std::integral_constant<K, K::kGeneric>());
  } else if (layout == Layout::kChannelsFirst && cells % kVec == 0) {
    fn(std::integral_constant<int, kVec>(), std::integral_constant<K, K::kPlane>());
  } else if (layout == Layout::kChannelsLast && num_channels % kVec == 0) {
    fn(std::integral_constant<int, kVec>(), std::integral_constant<K, K::kPixel>());
  } else {
    fn(std::integral_constant<int, kVec>(), std::integral_constant<K, K::kGeneric>());
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
