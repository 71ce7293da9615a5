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
#include <cstring>
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

// Unsigned word of `Bytes` bytes that load_vec / store_vec move as one access.
template <int Bytes>
struct AccessWord;
template <>
struct AccessWord<1> {
  using type = unsigned char;
};
template <>
struct AccessWord<2> {
  using type = unsigned short;
};
template <>
struct AccessWord<4> {
  using type = unsigned;
};
template <>
struct AccessWord<8> {
  using type = uint2;
};
template <>
struct AccessWord<16> {
  using type = uint4;
};

// Vec<T, N> as kWords words of min(sizeof(Vec), 16) bytes: one for every Vec
// up to 16 bytes, two for a 32-byte one (8 floats of a mask-table row).
template <typename T, int N>
struct VecWords {
  static constexpr int kBytes = static_cast<int>(sizeof(Vec<T, N>));
  static constexpr int kWordBytes = kBytes < 16 ? kBytes : 16;
  using Word = typename AccessWord<kWordBytes>::type;
  static constexpr int kWords = kBytes / kWordBytes;
  static_assert(kWords * kWordBytes == kBytes && sizeof(Word) == kWordBytes, "Vec size must be a power of two");
};

// One 128-bit store (st.global.v4.b32) of w to global memory at p.
__device__ __forceinline__ void store_global_128(void* p, const uint4& w) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(
                   static_cast<unsigned long long>(__cvta_generic_to_global(p))),
               "r"(w.x), "r"(w.y), "r"(w.z), "r"(w.w)
               : "memory");
}

// The N elements at p (global memory, aligned to sizeof(T) * N), read as
// VecWords words (one 128-bit load per 16 bytes) whose bits are copied into
// the Vec. N == 1 is a plain scalar load.
template <int N, typename T>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  Vec<T, N> v;
  if constexpr (N == 1) {
    v.val[0] = *p;
  } else {
    using Words = VecWords<T, N>;
    typename Words::Word w[Words::kWords];
#pragma unroll
    for (int k = 0; k < Words::kWords; ++k) w[k] = reinterpret_cast<const typename Words::Word*>(p)[k];
    memcpy(&v, w, sizeof(v));
  }
  return v;
}

// Stores the N elements of v at p (global memory, aligned to sizeof(T) * N):
// the Vec's bits copied into VecWords words, each 16-byte word stored with
// store_global_128. A plain store of the words is not enough: where nvcc
// unrolls a loop around it, NVVM splits the store of the remainder copy into
// the elements' own stores (seen on sm_90, nvcc 13: 4 x st.global.v2.u16 for
// 8 bf16, i.e. 8 x STG.E.U16 instead of one STG.E.128). N == 1 is a plain
// scalar store.
template <int N, typename T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  if constexpr (N == 1) {
    *p = v.val[0];
  } else {
    using Words = VecWords<T, N>;
    typename Words::Word w[Words::kWords];
    memcpy(w, &v, sizeof(v));
#pragma unroll
    for (int k = 0; k < Words::kWords; ++k) {
      if constexpr (Words::kWordBytes == 16) {
        store_global_128(reinterpret_cast<typename Words::Word*>(p) + k, w[k]);
      } else {
        reinterpret_cast<typename Words::Word*>(p)[k] = w[k];
      }
    }
  }
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
