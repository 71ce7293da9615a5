// CUDA kernels: cutmix_unmix_pool and its backward.
//
// Both first tabulate the applied masks [M, B, h * w] and the reciprocal
// pooling denominators [M, B] (unmix_masks.cuh: a 2-D elementwise kernel and
// one block per (i, b) row).
//
// Forward, a reduction over the h * w cells of each (b, c) for every
// subnetwork i, in passes of G subnetworks (G = 2 for M = 2, else 4: one pass
// for M <= 4; larger M re-reads the features once per further pass):
//   * NCHW: a group of LANES lanes of one warp reduces one contiguous (b, c)
//     plane (LANES = 8 for small planes, else 32; lane-strided chunks of VEC
//     cells, VEC = 16 / sizeof(scalar_t) when h * w and the pointer allow,
//     else 1; each chunk's G mask values are read with one vector load per
//     subnetwork), then a shuffle reduction within the group;
//   * channels_last: a block of LANES x (kThreads / LANES) threads takes one
//     (b, tile of LANES * VEC channels), LANES = 8 or 32 chosen so that few
//     lanes fall past C and, when the blocks are fewer than the SMs can hold,
//     the tiles are narrow; thread (tx, ty) loads VEC consecutive channels at
//     cells ty, ty + rows, ... (coalesced along the channels), and the partial
//     sums of the rows are combined through shared memory.
// Pass-through channels (c >= channels) accumulate the plain sum into every
// accumulator, so every subnetwork's output reads the same value.
//
// Backward, an elementwise kernel over grad_f (as in cutmix_unmix.cu) after a
// small kernel (one thread per (b, c)) that forms the opmath tables
// gscaled[i, b, c] = grad_out[i, b, c] * inv_denom[i, b] and, for the plain
// channels, gplain[b, c] = sum_i grad_out[i, b, c] / (h * w).
//
// To tune on a GPU: LANES / the rows per block / the tile width against the shape
// (small B * C leaves SMs idle; splitting the cells across blocks would need a
// second reduction pass), several loads in flight per thread, staging a
// sample's mask rows in shared memory.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>
#include <type_traits>

#include "../box_math.h"
#include "../op_args.h"
#include "cuda_utils.cuh"
#include "unmix_masks.cuh"

namespace mixshare_ops {
namespace {

// out[i, b, c] for c < channels: inv_denom[i, b] * sum_cells f * mask_i;
// else sum_cells f / (h * w). See the file comment for the mapping.
// G subnetworks are accumulated per pass over the features.
template <typename scalar_t, int VEC, int LANES, int G>
__global__ void __launch_bounds__(cuda::kThreads)
    pool_nchw_kernel(const scalar_t* __restrict__ src, const at::opmath_type<scalar_t>* __restrict__ masks,
                     const at::opmath_type<scalar_t>* __restrict__ inv_denom, int64_t subnets, int64_t batch,
                     int64_t num_channels, int64_t cells, int64_t channels, scalar_t* __restrict__ out) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int kGroups = 32 / LANES;  // planes per warp
  const int lane = threadIdx.x % 32, group = lane / LANES, group_lane = lane % LANES;
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int64_t num_warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  const int64_t planes = batch * num_channels, nvec = cells / VEC;
  // `base` is warp-uniform, so every lane runs the same shuffles.
  for (int64_t base = warp * kGroups; base < planes; base += num_warps * kGroups) {
    const int64_t plane = base + group;
    const bool active = plane < planes;
    const int64_t b = active ? plane / num_channels : 0, c = active ? plane % num_channels : 0;
    const bool unmixed = c < channels;
    const scalar_t* f = src + plane * cells;
    for (int64_t i0 = 0; i0 < subnets; i0 += G) {
      opmath_t acc[G];
#pragma unroll
      for (int ii = 0; ii < G; ++ii) acc[ii] = 0;
      if (active) {
        const opmath_t* mask[G];
#pragma unroll
        for (int ii = 0; ii < G; ++ii)
          mask[ii] = masks + ((i0 + ii < subnets ? i0 + ii : i0) * batch + b) * cells;
        for (int64_t v = group_lane; v < nvec; v += LANES) {
          const auto fv = cuda::load_vec<VEC>(f + v * VEC);
          if (unmixed) {
            // Mask rows start at multiples of cells, a multiple of VEC: aligned vector loads.
            cuda::Vec<opmath_t, VEC> mv[G];
#pragma unroll
            for (int ii = 0; ii < G; ++ii) mv[ii] = cuda::load_vec<VEC>(mask[ii] + v * VEC);
#pragma unroll
            for (int j = 0; j < VEC; ++j) {
              const opmath_t x = static_cast<opmath_t>(fv.val[j]);
#pragma unroll
              for (int ii = 0; ii < G; ++ii)
                if (i0 + ii < subnets) acc[ii] += x * mv[ii].val[j];
            }
          } else {  // pass-through plane: the plain sum, no masks read
#pragma unroll
            for (int j = 0; j < VEC; ++j) {
              const opmath_t x = static_cast<opmath_t>(fv.val[j]);
#pragma unroll
              for (int ii = 0; ii < G; ++ii) acc[ii] += x;
            }
          }
        }
      }
#pragma unroll
      for (int ii = 0; ii < G; ++ii) {
#pragma unroll
        for (int offset = LANES / 2; offset > 0; offset /= 2)
          acc[ii] += __shfl_xor_sync(0xffffffffu, acc[ii], offset);
      }
      if (active && group_lane == 0) {
#pragma unroll
        for (int ii = 0; ii < G; ++ii) {
          const int64_t i = i0 + ii;
          if (i < subnets)
            out[(i * batch + b) * num_channels + c] = static_cast<scalar_t>(
                unmixed ? acc[ii] * inv_denom[i * batch + b] : acc[ii] / static_cast<opmath_t>(cells));
        }
      }
    }
  }
}

template <typename scalar_t, int VEC, int LANES, int G>
__global__ void __launch_bounds__(cuda::kThreads)
    pool_nhwc_kernel(const scalar_t* __restrict__ src, const at::opmath_type<scalar_t>* __restrict__ masks,
                     const at::opmath_type<scalar_t>* __restrict__ inv_denom, int64_t subnets, int64_t batch,
                     int64_t num_channels, int64_t cells, int64_t channels, scalar_t* __restrict__ out) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int kSlots = G * VEC;  // accumulators per thread: slot = ii * VEC + j
  constexpr int kRows = cuda::kThreads / LANES;  // blockDim = (LANES, kRows)
  __shared__ opmath_t partial[kRows][kSlots][LANES];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t tile_channels = LANES * VEC, tiles = cuda::ceil_div(num_channels, tile_channels);
  const int64_t slice = num_channels * cells;
  // `item` and `i0` are block-uniform, so every thread reaches every barrier.
  for (int64_t item = blockIdx.x; item < batch * tiles; item += gridDim.x) {
    const int64_t b = item / tiles, tile = item % tiles;
    const int64_t c0 = tile * tile_channels + tx * VEC;
    const bool valid = c0 < num_channels;  // then c0 + VEC <= C (C % VEC == 0)
    const scalar_t* f = src + b * slice + c0;
    for (int64_t i0 = 0; i0 < subnets; i0 += G) {
      opmath_t acc[G][VEC];
#pragma unroll
      for (int ii = 0; ii < G; ++ii)
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[ii][j] = 0;
      if (valid) {
        const opmath_t* mask[G];
#pragma unroll
        for (int ii = 0; ii < G; ++ii)
          mask[ii] = masks + ((i0 + ii < subnets ? i0 + ii : i0) * batch + b) * cells;
        for (int64_t cell = ty; cell < cells; cell += kRows) {
          const auto fv = cuda::load_vec<VEC>(f + cell * num_channels);
          opmath_t m[G];
#pragma unroll
          for (int ii = 0; ii < G; ++ii) m[ii] = i0 + ii < subnets ? mask[ii][cell] : opmath_t(0);
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            const opmath_t x = static_cast<opmath_t>(fv.val[j]);
            const bool unmixed = c0 + j < channels;
#pragma unroll
            for (int ii = 0; ii < G; ++ii) acc[ii][j] += unmixed ? x * m[ii] : x;
          }
        }
      }
      __syncthreads();  // the previous pass's reads of `partial` are done
#pragma unroll
      for (int ii = 0; ii < G; ++ii)
#pragma unroll
        for (int j = 0; j < VEC; ++j) partial[ty][ii * VEC + j][tx] = acc[ii][j];
      __syncthreads();
      for (int slot = ty; slot < kSlots; slot += kRows) {
        opmath_t total = 0;
#pragma unroll
        for (int r = 0; r < kRows; ++r) total += partial[r][slot][tx];
        const int64_t i = i0 + slot / VEC, c = c0 + slot % VEC;
        if (valid && i < subnets)
          out[(i * batch + b) * num_channels + c] = static_cast<scalar_t>(
              c < channels ? total * inv_denom[i * batch + b] : total / static_cast<opmath_t>(cells));
      }
    }
  }
}

// Whether the channels_last forward takes tiles of 8 * vec channels (else
// 32 * vec): when they leave fewer lanes past C, or as few and the 32-wide
// tiles give fewer blocks than two per SM.
bool narrow_channel_tiles(int64_t batch, int64_t num_channels, int64_t vec, c10::DeviceIndex device) {
  const auto idle = [&](int64_t lanes) {
    return cuda::ceil_div(num_channels, lanes * vec) * lanes * vec - num_channels;
  };
  if (idle(8) != idle(32)) return idle(8) < idle(32);
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return batch * cuda::ceil_div(num_channels, 32 * vec) < 2 * static_cast<int64_t>(sms);
}

// gscaled[i, b, c] = grad_out[i, b, c] * inv_denom[i, b];
// gplain[b, c] = (sum_i grad_out[i, b, c]) / cells. One thread per (b, c).
template <typename scalar_t>
__global__ void __launch_bounds__(cuda::kThreads)
    pool_backward_prep_kernel(const scalar_t* __restrict__ grad,
                              const at::opmath_type<scalar_t>* __restrict__ inv_denom, int64_t subnets,
                              int64_t batch, int64_t num_channels, int64_t cells,
                              at::opmath_type<scalar_t>* __restrict__ gscaled,
                              at::opmath_type<scalar_t>* __restrict__ gplain) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t bc = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; bc < batch * num_channels;
       bc += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = bc / num_channels;
    opmath_t plain = 0;
    for (int64_t i = 0; i < subnets; ++i) {
      const int64_t index = i * batch * num_channels + bc;  // (i * B + b) * C + c
      const opmath_t gv = static_cast<opmath_t>(grad[index]);
      gscaled[index] = gv * inv_denom[i * batch + b];
      plain += gv;
    }
    gplain[bc] = plain / static_cast<opmath_t>(cells);
  }
}

// grad_f[b, k] = sum_i gscaled[i, b, c] * mask_i(b, y, x) for c < channels,
// else gplain[b, c]. Mapping as in cutmix_unmix.cu (grad_f is fresh, so only
// the pointers and the slice size decide VEC; cuda::Chunk reads the masks and
// the per-channel values of a chunk with vector or single loads where the
// layout allows).
template <typename scalar_t, int VEC, cuda::ChunkKind KIND>
__global__ void __launch_bounds__(cuda::kThreads)
    pool_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ gscaled,
                         const at::opmath_type<scalar_t>* __restrict__ gplain,
                         const at::opmath_type<scalar_t>* __restrict__ masks, int64_t subnets, int64_t batch,
                         int64_t num_channels, int64_t h, int64_t w, int64_t channels, Layout layout,
                         scalar_t* __restrict__ grad_f) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t cells = h * w, slice = num_channels * cells, nvec = slice / VEC;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    scalar_t* out_b = grad_f + b * slice;
    for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < nvec;
         v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t k0 = v * VEC;
      const cuda::Chunk<VEC, KIND> chunk(layout, k0, num_channels, h, w);
      bool unmixed[VEC], plain[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        unmixed[j] = chunk.channel(j) < channels;
        plain[j] = !unmixed[j];
      }
      opmath_t acc[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] = 0;
      for (int64_t i = 0; i < subnets; ++i) {
        const int64_t row = i * batch + b;
        opmath_t m[VEC], gs[VEC];
        chunk.gather_cells(masks + row * cells, unmixed, m);
        chunk.gather_channels(gscaled + row * num_channels, unmixed, gs);
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[j] += gs[j] * m[j];
      }
      opmath_t gp[VEC];
      chunk.gather_channels(gplain + b * num_channels, plain, gp);
      cuda::Vec<scalar_t, VEC> o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.val[j] = static_cast<scalar_t>(unmixed[j] ? acc[j] : gp[j]);
      cuda::store_vec<VEC>(out_b + k0, o);
    }
  }
}

at::Tensor cutmix_unmix_pool_cuda(const at::Tensor& features, const at::Tensor& boxes,
                                  const std::optional<at::Tensor>& inside_weight,
                                  const std::optional<at::Tensor>& outside_weight, int64_t box_height,
                                  int64_t box_width, double ratio, int64_t channels, c10::string_view normalize) {
  const FeatureArg f = feature_arg(features, "features");
  check_unmix_scalars(box_height, box_width, f.height, f.width, ratio, channels, f.channels);
  const bool masked = parse_normalize(std::string(normalize));
  const at::Tensor boxes_c = boxes_arg(boxes, features, "features", f.batch, box_height, box_width);
  const UnmixWeights wts = unmix_weights_arg(inside_weight, outside_weight, features, "features", f.batch,
                                             opmath_dtype(features.scalar_type()));
  const int64_t M = wts.subnets, B = f.batch, C = f.channels, h = f.height, w = f.width, cells = h * w;
  // The checks above put every tensor on the features' device.
  const c10::cuda::CUDAGuard guard(features.device());
  at::Tensor out = at::empty({M, B, C}, features.options());
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "cutmix_unmix_pool_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor masks = cuda::unmix_mask_table<opmath_t>(boxes_c, wts, B, box_height, box_width, h, w,
                                                              static_cast<opmath_t>(ratio), stream);
    const at::Tensor inv_denom = cuda::inv_denominators<opmath_t>(masks, masked, stream);
    const scalar_t* src = f.data.const_data_ptr<scalar_t>();
    const opmath_t* masks_p = masks.const_data_ptr<opmath_t>();
    const opmath_t* inv_denom_p = inv_denom.const_data_ptr<opmath_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    constexpr int kVec = cuda::vec_size<scalar_t>();
    const bool pairs = M <= 2;  // G = 2 subnetworks per pass, else 4
    if (f.layout == Layout::kChannelsFirst) {
      // Plane starts (and mask rows) are multiples of cells, so cells % kVec == 0 aligns them.
      const bool vectorize = cells % kVec == 0 && cuda::is_aligned(src, 16) && cuda::is_aligned(masks_p, 16);
      const bool narrow = (vectorize ? cells / kVec : cells) <= 64;  // 8 lanes per plane, else 32
      cuda::select_int<kVec, 1>(vectorize, [&](auto vec) {
        cuda::select_int<8, 32>(narrow, [&](auto lanes) {
          cuda::select_int<2, 4>(pairs, [&](auto group) {
            constexpr int V = decltype(vec)::value, L = decltype(lanes)::value, G = decltype(group)::value;
            const int64_t planes_per_block = (cuda::kThreads / 32) * (32 / L);
            pool_nchw_kernel<scalar_t, V, L, G>
                <<<cuda::flat_grid(cuda::ceil_div(B * C, planes_per_block)), cuda::kThreads, 0, stream>>>(
                    src, masks_p, inv_denom_p, M, B, C, cells, channels, dst);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        });
      });
    } else {
      // Element offsets b * slice + cell * C + c0 are multiples of kVec when C is.
      const bool vectorize = C % kVec == 0 && cuda::is_aligned(src, 16);
      const bool narrow = narrow_channel_tiles(B, C, vectorize ? kVec : 1, features.device().index());
      cuda::select_int<kVec, 1>(vectorize, [&](auto vec) {
        cuda::select_int<8, 32>(narrow, [&](auto lanes) {
          cuda::select_int<2, 4>(pairs, [&](auto group) {
            constexpr int V = decltype(vec)::value, L = decltype(lanes)::value, G = decltype(group)::value;
            const int64_t tiles = cuda::ceil_div(C, L * V);
            pool_nhwc_kernel<scalar_t, V, L, G>
                <<<cuda::flat_grid(B * tiles), dim3(L, cuda::kThreads / L), 0, stream>>>(
                    src, masks_p, inv_denom_p, M, B, C, cells, channels, dst);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        });
      });
    }
  });
  return out;
}

at::Tensor cutmix_unmix_pool_backward_cuda(const at::Tensor& grad_out, const at::Tensor& boxes,
                                           const std::optional<at::Tensor>& inside_weight,
                                           const std::optional<at::Tensor>& outside_weight, int64_t box_height,
                                           int64_t box_width, double ratio, int64_t channels,
                                           c10::string_view normalize, int64_t height, int64_t width,
                                           bool channels_last) {
  const PoolGradArg arg = pool_grad_arg(grad_out, boxes, inside_weight, outside_weight, box_height, box_width, ratio,
                                        channels, normalize, height, width);
  const at::Tensor& boxes_c = arg.boxes;
  const UnmixWeights& wts = arg.weights;
  const bool masked = arg.masked;
  const int64_t M = wts.subnets, batch = grad_out.size(1), C = grad_out.size(2), h = height, w = width,
                cells = h * w, slice = C * cells;
  const Layout layout = channels_last ? Layout::kChannelsLast : Layout::kChannelsFirst;
  const c10::cuda::CUDAGuard guard(grad_out.device());
  at::Tensor grad_f = empty_features(batch, C, h, w, layout, grad_out.options());
  if (grad_f.numel() == 0) return grad_f;
  const at::Tensor g = grad_out.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto dtype = grad_out.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "cutmix_unmix_pool_backward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor masks = cuda::unmix_mask_table<opmath_t>(boxes_c, wts, batch, box_height, box_width, h, w,
                                                              static_cast<opmath_t>(ratio), stream);
    const at::Tensor inv_denom = cuda::inv_denominators<opmath_t>(masks, masked, stream);
    const at::Tensor gscaled = at::empty({M, batch, C}, masks.options());
    const at::Tensor gplain = at::empty({batch, C}, masks.options());
    pool_backward_prep_kernel<scalar_t>
        <<<cuda::flat_grid(cuda::ceil_div(batch * C, cuda::kThreads)), cuda::kThreads, 0, stream>>>(
            g.const_data_ptr<scalar_t>(), inv_denom.const_data_ptr<opmath_t>(), M, batch, C, cells,
            gscaled.data_ptr<opmath_t>(), gplain.data_ptr<opmath_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    scalar_t* dst = grad_f.data_ptr<scalar_t>();
    const opmath_t* gscaled_p = gscaled.const_data_ptr<opmath_t>();
    const opmath_t* gplain_p = gplain.const_data_ptr<opmath_t>();
    const opmath_t* masks_p = masks.const_data_ptr<opmath_t>();
    constexpr int kVec = cuda::vec_size<scalar_t>();
    constexpr int64_t kTableAlign = kVec * sizeof(opmath_t);
    const bool vectorize = slice % kVec == 0 && cuda::is_aligned(dst, 16) &&
                           cuda::is_aligned(gscaled_p, kTableAlign) && cuda::is_aligned(gplain_p, kTableAlign) &&
                           cuda::is_aligned(masks_p, kTableAlign);
    cuda::dispatch_chunk<kVec>(vectorize, layout, C, cells, [&](auto vec, auto kind) {
      constexpr int V = decltype(vec)::value;
      constexpr cuda::ChunkKind K = decltype(kind)::value;
      pool_backward_kernel<scalar_t, V, K><<<cuda::sample_grid(slice / V, batch), cuda::kThreads, 0, stream>>>(
          gscaled_p, gplain_p, masks_p, M, batch, C, h, w, channels, layout, dst);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return grad_f;
}

}  // namespace

TORCH_LIBRARY_IMPL(mixshare_ops, CUDA, m) {
  m.impl("cutmix_unmix_pool", &cutmix_unmix_pool_cuda);
  m.impl("cutmix_unmix_pool_backward", &cutmix_unmix_pool_backward_cuda);
}

}  // namespace mixshare_ops
