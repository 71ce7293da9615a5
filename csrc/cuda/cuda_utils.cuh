// Helpers shared by the CUDA kernels: launch geometry, 128-bit vector
// accesses, and stepping through a [C, H, W] slice in memory order.
//
// Only ATen core and c10/cuda headers are used (not ATen/cuda/CUDAContext.h,
// which pulls in cuBLAS headers that minimal CUDA toolkits lack).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../box_math.h"

namespace mixshare_ops {
namespace cuda {

using detail::Layout;

// Threads per block of every 1-D launch. Tunable on a GPU; every kernel that
// uses shared memory or warp shuffles relies on it being a multiple of 32.
constexpr int kThreads = 256;
constexpr int64_t kMaxGridX = 2147483647;  // 2^31 - 1
constexpr int64_t kMaxGridY = 65535;

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid of kThreads-wide blocks for "per-sample" kernels: x covers `per_sample`
// work items of one sample, y covers the samples. Kernels loop over both with
// grid strides, so capping either dimension is safe.
inline dim3 sample_grid(int64_t per_sample, int64_t samples) {
  const int64_t gx = std::min(std::max<int64_t>(ceil_div(per_sample, kThreads), 1), kMaxGridX);
  const int64_t gy = std::min(std::max<int64_t>(samples, 1), kMaxGridY);
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
}

// 1-D grid with `blocks` blocks, capped (kernels use grid-stride loops).
inline unsigned flat_grid(int64_t blocks) {
  return static_cast<unsigned>(std::min(std::max<int64_t>(blocks, 1), kMaxGridX));
}

// Calls fn(std::integral_constant<int, A>()) if `first`, else with B: picks a
// kernel instantiation from a runtime condition.
template <int A, int B, typename Fn>
void select_int(bool first, Fn&& fn) {
  if (first) {
    fn(std::integral_constant<int, A>());
  } else {
    fn(std::integral_constant<int, B>());
  }
}

// Elements of T in one 128-bit access.
template <typename T>
constexpr int vec_size() {
  return sizeof(T) >= 16 ? 1 : static_cast<int>(16 / sizeof(T));
}

// N elements accessed as one aligned unit (one 128-bit load/store when
// sizeof(T) * N == 16).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T val[N];
};

template <int N, typename T>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

template <int N, typename T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

inline bool is_aligned(const void* p, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

// Moves (c, y, x) to the next element of a [C, H, W] slice in memory order,
// i.e. to what detail::split_slice_index gives for index + 1.
__device__ __forceinline__ void next_in_slice(Layout layout, int64_t& c, int64_t& y, int64_t& x, int64_t channels,
                                              int64_t height, int64_t width) {
  if (layout == Layout::kChannelsFirst) {
    if (++x == width) {
      x = 0;
      if (++y == height) {
        y = 0;
        ++c;
      }
    }
  } else {
    if (++c == channels) {
      c = 0;
      if (++x == width) {
        x = 0;
        ++y;
      }
    }
  }
}

// Sum over a warp (every lane gets the total); all 32 lanes must call it.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Data pointer of optional weights; null (the default weights) if absent.
template <typename T>
const T* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

}  // namespace cuda
}  // namespace mixshare_ops
