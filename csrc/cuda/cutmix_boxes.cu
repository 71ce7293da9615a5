// CUDA kernels: cutmix_boxes and cutmix_mask.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../box_math.h"
#include "../op_args.h"
#include "cuda_utils.cuh"

namespace mixshare_ops {
namespace {

// One thread per sample.
template <typename T>
__global__ void __launch_bounds__(cuda::kThreads)
    cutmix_boxes_kernel(const T* __restrict__ lam, const T* __restrict__ center, int64_t batch, int64_t height,
                        int64_t width, int32_t* __restrict__ boxes, T* __restrict__ area) {
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < batch;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const detail::Box box = detail::cutmix_box(lam[b], center[2 * b], center[2 * b + 1], height, width);
    boxes[4 * b + 0] = static_cast<int32_t>(box.top);
    boxes[4 * b + 1] = static_cast<int32_t>(box.left);
    boxes[4 * b + 2] = static_cast<int32_t>(box.bottom);
    boxes[4 * b + 3] = static_cast<int32_t>(box.right);
    area[b] = static_cast<T>(box.area()) / static_cast<T>(height * width);
  }
}

// Grid: y over samples, x over VEC-element chunks of the sample's H x W plane
// (VEC elements per 128-bit store where H * W allows it, else 1).
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(cuda::kThreads)
    cutmix_mask_kernel(const int32_t* __restrict__ boxes, int64_t batch, int64_t height, int64_t width,
                       scalar_t* __restrict__ mask) {
  const int64_t plane = height * width, nvec = plane / VEC;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const detail::Box box = detail::load_box(boxes, b, height, width);
    scalar_t* dst = mask + b * plane;
    for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < nvec;
         v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      int64_t c, y, x;
      detail::split_slice_index(Layout::kChannelsFirst, v * VEC, 1, height, width, c, y, x);
      cuda::Vec<scalar_t, VEC> out;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        out.val[j] = static_cast<scalar_t>(box.contains(y, x) ? 1 : 0);
        if (j + 1 < VEC) cuda::next_in_slice(Layout::kChannelsFirst, c, y, x, 1, height, width);
      }
      cuda::store_vec<VEC>(dst + v * VEC, out);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> cutmix_boxes_cuda(const at::Tensor& lam, const at::Tensor& center, int64_t height,
                                                     int64_t width, bool check_values) {
  const BoxSampleArg arg = box_sample_arg(lam, center, height, width, check_values);
  const int64_t batch = arg.lam.size(0);
  const c10::cuda::CUDAGuard guard(lam.device());
  at::Tensor boxes = at::empty({batch, 4}, lam.options().dtype(at::kInt));
  at::Tensor area = at::empty({batch}, arg.lam.options());
  AT_DISPATCH_FLOATING_TYPES(arg.lam.scalar_type(), "cutmix_boxes_cuda", [&] {
    if (batch == 0) return;
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const unsigned blocks = cuda::flat_grid(cuda::ceil_div(batch, cuda::kThreads));
    cutmix_boxes_kernel<scalar_t><<<blocks, cuda::kThreads, 0, stream>>>(
        arg.lam.const_data_ptr<scalar_t>(), arg.center.const_data_ptr<scalar_t>(), batch, height, width,
        boxes.data_ptr<int32_t>(), area.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {boxes, area.to(lam.scalar_type())};
}

at::Tensor cutmix_mask_cuda(const at::Tensor& boxes, int64_t height, int64_t width, at::ScalarType dtype) {
  const at::Tensor boxes_c = mask_boxes_arg(boxes, height, width);
  const int64_t batch = boxes.size(0);
  const c10::cuda::CUDAGuard guard(boxes.device());
  at::Tensor mask = at::empty({batch, 1, height, width}, boxes.options().dtype(dtype));
  // Dispatched even when empty, so that an unsupported dtype fails as on CPU.
  AT_DISPATCH_ALL_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, dtype, "cutmix_mask_cuda", [&] {
    if (mask.numel() == 0) return;
    const int64_t plane = height * width;
    constexpr int kVec = cuda::vec_size<scalar_t>();
    const int32_t* boxes_p = boxes_c.const_data_ptr<int32_t>();
    scalar_t* out = mask.data_ptr<scalar_t>();
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    // Fresh allocations are 16-byte aligned; a chunk must not straddle samples.
    if (kVec > 1 && plane % kVec == 0 && cuda::is_aligned(out, 16)) {
      cutmix_mask_kernel<scalar_t, kVec>
          <<<cuda::sample_grid(plane / kVec, batch), cuda::kThreads, 0, stream>>>(boxes_p, batch, height, width, out);
    } else {
      cutmix_mask_kernel<scalar_t, 1>
          <<<cuda::sample_grid(plane, batch), cuda::kThreads, 0, stream>>>(boxes_p, batch, height, width, out);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(mixshare_ops, CUDA, m) {
  m.impl("cutmix_boxes", &cutmix_boxes_cuda);
  m.impl("cutmix_mask", &cutmix_mask_cuda);
}

}  // namespace mixshare_ops
