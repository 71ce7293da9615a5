// CPU-only helpers shared by the kernels in this folder: element conversions
// that vectorise, parallel grain sizes, instruction-set dispatch and the
// inner loops over contiguous runs.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/TensorIterator.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

// The extension is compiled for the baseline instruction set (SSE2 on
// x86-64). Marking the function that runs a kernel's loops with
// MIXSHARE_CPU_MULTIVERSION also compiles it for the x86-64-v3 (AVX2, FMA)
// and x86-64-v4 (AVX-512) levels, and the copy the CPU supports is picked
// when the library loads (GCC function multiversioning, an ifunc); flatten
// inlines the inner loops into each copy. The wider vectors matter most for
// the bfloat16 conversions: the AVX2 copy runs them about 2x faster than the
// baseline, the AVX-512 one about 2x faster again. The copies with FMA round
// a * b + c once where the baseline rounds twice, so results may differ
// between machines in the last bit of the opmath value (never across runs).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && defined(__linux__)
#define MIXSHARE_CPU_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))
#else
#define MIXSHARE_CPU_MULTIVERSION
#endif

// GCC and Clang vector extensions, for the reductions (dot products and
// sums), which the compiler may not vectorise on its own: that would
// reassociate floating-point additions.
#if defined(__GNUC__)
#define MIXSHARE_CPU_VECTOR_EXTENSIONS 1
#else
#define MIXSHARE_CPU_VECTOR_EXTENSIONS 0
#endif

namespace mixshare_ops {
namespace cpu {

// ------------------------------------------------------------ conversions
//
// Loads into the opmath type and rounded stores from it. The bfloat16 ones
// are branch-free so that loops over them auto-vectorise (c10's rounding
// branches on NaN, which stops GCC); they give exactly c10's bits:
// round-to-nearest-even, every NaN -> 0x7FC0.

inline float to_opmath(float v) { return v; }
inline double to_opmath(double v) { return v; }
inline float to_opmath(c10::Half v) { return static_cast<float>(v); }
inline float to_opmath(c10::BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

template <typename T>
inline T from_opmath(at::opmath_type<T> v) {
  return static_cast<T>(v);
}

template <>
inline c10::BFloat16 from_opmath<c10::BFloat16>(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const bool nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
  return c10::BFloat16(static_cast<uint16_t>(nan ? 0x7FC0u : rounded), c10::BFloat16::from_bits());
}

// ---------------------------------------------------------------- parallel

// Grain (in tasks) for at::parallel_for when each task touches
// `elements_per_task` elements: about at::internal::GRAIN_SIZE elements per
// chunk, so that small inputs stay on one thread.
inline int64_t grain_for(int64_t elements_per_task) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, elements_per_task));
}

// Calls fn(task, b, c) for tasks [begin, end) of a sample-major grid of
// tasks_per_sample tasks per sample (b = task / tasks_per_sample,
// c = task % tasks_per_sample), stepping (b, c) instead of dividing per task.
template <typename Fn>
void for_each_task(int64_t begin, int64_t end, int64_t tasks_per_sample, Fn&& fn) {
  int64_t b = begin / tasks_per_sample, c = begin % tasks_per_sample;
  for (int64_t task = begin; task < end; ++task) {
    fn(task, b, c);
    if (++c == tasks_per_sample) {
      c = 0;
      ++b;
    }
  }
}

// ------------------------------------------------------------ inner loops
//
// Contiguous runs of n elements, the innermost loops of every kernel: plain
// loops over __restrict pointers with no calls, so that the compiler
// vectorises them.

// Elements per chunk of the opmath buffers of the loops below.
constexpr int64_t kChunk = 256;

// out[k] = sum_i w[i] * x[i][offset + k] for k < n, summed in subnetwork
// order in opmath and rounded once. x[i] may be of the output type or opmath.
template <typename in_t, typename out_t, typename opmath_t>
void weighted_sum(const in_t* const* x, int64_t offset, const opmath_t* w, int64_t subnets, int64_t n,
                  out_t* __restrict out) {
  if (subnets == 2) {  // the common case: one pass, no accumulator buffer
    const in_t* __restrict x0 = x[0] + offset;
    const in_t* __restrict x1 = x[1] + offset;
    const opmath_t w0 = w[0], w1 = w[1];
    for (int64_t k = 0; k < n; ++k) out[k] = from_opmath<out_t>(w0 * to_opmath(x0[k]) + w1 * to_opmath(x1[k]));
    return;
  }
  opmath_t acc[kChunk];
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t len = std::min(kChunk, n - start);
    const in_t* __restrict x0 = x[0] + offset + start;
    const opmath_t w0 = w[0];
    for (int64_t k = 0; k < len; ++k) acc[k] = w0 * to_opmath(x0[k]);
    for (int64_t i = 1; i < subnets; ++i) {
      const in_t* __restrict xi = x[i] + offset + start;
      const opmath_t wi = w[i];
      for (int64_t k = 0; k < len; ++k) acc[k] += wi * to_opmath(xi[k]);
    }
    out_t* __restrict o = out + start;
    for (int64_t k = 0; k < len; ++k) o[k] = from_opmath<out_t>(acc[k]);
  }
}

// out[k] = sum_i x[i][k] * mask[i][k] for k < n, summed in subnetwork order
// in opmath and rounded once.
template <typename scalar_t, typename opmath_t>
void masked_sum(const scalar_t* const* x, const opmath_t* const* mask, int64_t subnets, int64_t n,
                scalar_t* __restrict out) {
  if (subnets == 2) {
    const scalar_t* __restrict x0 = x[0];
    const scalar_t* __restrict x1 = x[1];
    const opmath_t* __restrict m0 = mask[0];
    const opmath_t* __restrict m1 = mask[1];
    for (int64_t k = 0; k < n; ++k)
      out[k] = from_opmath<scalar_t>(to_opmath(x0[k]) * m0[k] + to_opmath(x1[k]) * m1[k]);
    return;
  }
  opmath_t acc[kChunk];
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t len = std::min(kChunk, n - start);
    const scalar_t* __restrict x0 = x[0] + start;
    const opmath_t* __restrict m0 = mask[0] + start;
    for (int64_t k = 0; k < len; ++k) acc[k] = to_opmath(x0[k]) * m0[k];
    for (int64_t i = 1; i < subnets; ++i) {
      const scalar_t* __restrict xi = x[i] + start;
      const opmath_t* __restrict mi = mask[i] + start;
      for (int64_t k = 0; k < len; ++k) acc[k] += to_opmath(xi[k]) * mi[k];
    }
    scalar_t* __restrict o = out + start;
    for (int64_t k = 0; k < len; ++k) o[k] = from_opmath<scalar_t>(acc[k]);
  }
}

// out[k] = w * x[k] for k < n.
template <typename scalar_t, typename opmath_t>
void scale_run(const scalar_t* __restrict x, opmath_t w, int64_t n, scalar_t* __restrict out) {
  for (int64_t k = 0; k < n; ++k) out[k] = from_opmath<scalar_t>(w * to_opmath(x[k]));
}

// out[k] = x[k] * mask[k] for k < n.
template <typename scalar_t, typename opmath_t>
void multiply_run(const scalar_t* __restrict x, const opmath_t* __restrict mask, int64_t n, scalar_t* __restrict out) {
  for (int64_t k = 0; k < n; ++k) out[k] = from_opmath<scalar_t>(to_opmath(x[k]) * mask[k]);
}

// out[i][k] = x[k] * mask[i][k] for every subnetwork i and k < n.
template <typename scalar_t, typename opmath_t>
void multiply_runs(const scalar_t* __restrict x, const opmath_t* const* mask, int64_t subnets, int64_t n,
                   scalar_t* const* out) {
  if (subnets == 2) {  // reads and converts x once
    const opmath_t* __restrict m0 = mask[0];
    const opmath_t* __restrict m1 = mask[1];
    scalar_t* __restrict out0 = out[0];
    scalar_t* __restrict out1 = out[1];
    for (int64_t k = 0; k < n; ++k) {
      const opmath_t v = to_opmath(x[k]);
      out0[k] = from_opmath<scalar_t>(v * m0[k]);
      out1[k] = from_opmath<scalar_t>(v * m1[k]);
    }
    return;
  }
  for (int64_t i = 0; i < subnets; ++i) multiply_run(x, mask[i], n, out[i]);
}

// Calls fn(offset, values, len) over consecutive pieces [offset, offset + len)
// of x[0, n) given in opmath: x itself for float and double, converted
// kChunk elements at a time for the reduced-precision types.
template <typename scalar_t, typename Fn>
void for_each_opmath_chunk(const scalar_t* x, int64_t n, Fn&& fn) {
  using opmath_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    fn(int64_t(0), x, n);
  } else {
    opmath_t buffer[kChunk];
    for (int64_t start = 0; start < n; start += kChunk) {
      const int64_t len = std::min(kChunk, n - start);
      const scalar_t* __restrict in = x + start;
      for (int64_t k = 0; k < len; ++k) buffer[k] = to_opmath(in[k]);
      fn(start, static_cast<const opmath_t*>(buffer), len);
    }
  }
}

// --------------------------------------------------------------- reductions
//
// Sums in a fixed order, whatever the instruction set: 32-byte vector lanes
// accumulate interleaved partial sums, the lanes are added pairwise, then the
// scalar tail.

#if MIXSHARE_CPU_VECTOR_EXTENSIONS
// 32-byte vectors: one AVX2 register, two SSE2 registers.
template <typename T>
struct Simd {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int64_t size = 32 / sizeof(T);

  // Vectors go by reference only: passing one by value between copies of
  // a multiversioned function would not follow one calling convention.
  static void load(type& v, const T* p) { std::memcpy(&v, p, sizeof(v)); }
  // Adds the lanes pairwise, halving the vector each step (a short chain of
  // dependent additions).
  static T sum_lanes(const type& v) {
    T lanes[size];
    std::memcpy(lanes, &v, sizeof(v));
    for (int64_t half = size / 2; half > 0; half /= 2)
      for (int64_t j = 0; j < half; ++j) lanes[j] += lanes[j + half];
    return lanes[0];
  }
};
#endif

// Each reduction keeps two vector accumulators per result, so that two
// chains of additions overlap (a plane of 64 elements is only 8 vectors).

// sum_k x[k] * m[k] (both opmath).
template <typename T>
T dot(const T* __restrict x, const T* __restrict m, int64_t n) {
  int64_t k = 0;
  T total = 0;
#if MIXSHARE_CPU_VECTOR_EXTENSIONS
  using S = Simd<T>;
  typename S::type acc_a = {}, acc_b = {}, xa, xb, ma, mb;
  for (; k + 2 * S::size <= n; k += 2 * S::size) {
    S::load(xa, x + k);
    S::load(xb, x + k + S::size);
    S::load(ma, m + k);
    S::load(mb, m + k + S::size);
    acc_a += xa * ma;
    acc_b += xb * mb;
  }
  total = S::sum_lanes(acc_a + acc_b);
#endif
  for (; k < n; ++k) total += x[k] * m[k];
  return total;
}

// {sum_k x[k] * m0[k], sum_k x[k] * m1[k]}, reading x once (all opmath).
template <typename T>
void dot2(const T* __restrict x, const T* __restrict m0, const T* __restrict m1, int64_t n, T& out0, T& out1) {
  int64_t k = 0;
  T total0 = 0, total1 = 0;
#if MIXSHARE_CPU_VECTOR_EXTENSIONS
  using S = Simd<T>;
  typename S::type acc0a = {}, acc0b = {}, acc1a = {}, acc1b = {}, xa, xb, ma, mb;
  for (; k + 2 * S::size <= n; k += 2 * S::size) {
    S::load(xa, x + k);
    S::load(xb, x + k + S::size);
    S::load(ma, m0 + k);
    S::load(mb, m0 + k + S::size);
    acc0a += xa * ma;
    acc0b += xb * mb;
    S::load(ma, m1 + k);
    S::load(mb, m1 + k + S::size);
    acc1a += xa * ma;
    acc1b += xb * mb;
  }
  total0 = S::sum_lanes(acc0a + acc0b);
  total1 = S::sum_lanes(acc1a + acc1b);
#endif
  for (; k < n; ++k) {
    total0 += x[k] * m0[k];
    total1 += x[k] * m1[k];
  }
  out0 = total0;
  out1 = total1;
}

// sum_k x[k] (opmath).
template <typename T>
T sum(const T* __restrict x, int64_t n) {
  int64_t k = 0;
  T total = 0;
#if MIXSHARE_CPU_VECTOR_EXTENSIONS
  using S = Simd<T>;
  typename S::type acc_a = {}, acc_b = {}, xa, xb;
  for (; k + 2 * S::size <= n; k += 2 * S::size) {
    S::load(xa, x + k);
    S::load(xb, x + k + S::size);
    acc_a += xa;
    acc_b += xb;
  }
  total = S::sum_lanes(acc_a + acc_b);
#endif
  for (; k < n; ++k) total += x[k];
  return total;
}

}  // namespace cpu
}  // namespace mixshare_ops
