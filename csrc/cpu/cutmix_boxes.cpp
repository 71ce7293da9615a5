// CPU kernels: cutmix_boxes and cutmix_mask.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "../box_math.h"
#include "../op_args.h"
#include "kernel_utils.h"

namespace mixshare_ops {
namespace {

std::tuple<at::Tensor, at::Tensor> cutmix_boxes_cpu(const at::Tensor& lam, const at::Tensor& center, int64_t height,
                                                    int64_t width, bool check_values) {
  const BoxSampleArg arg = box_sample_arg(lam, center, height, width, check_values);
  const int64_t batch = arg.lam.size(0);
  at::Tensor boxes = at::empty({batch, 4}, lam.options().dtype(at::kInt));
  at::Tensor area = at::empty({batch}, arg.lam.options());
  AT_DISPATCH_FLOATING_TYPES(arg.lam.scalar_type(), "cutmix_boxes_cpu", [&] {
    const scalar_t* lam_p = arg.lam.const_data_ptr<scalar_t>();
    const scalar_t* center_p = arg.center.const_data_ptr<scalar_t>();
    int32_t* boxes_p = boxes.data_ptr<int32_t>();
    scalar_t* area_p = area.data_ptr<scalar_t>();
    for (int64_t b = 0; b < batch; ++b) {
      const detail::Box box = detail::cutmix_box(lam_p[b], center_p[2 * b], center_p[2 * b + 1], height, width);
      boxes_p[4 * b + 0] = static_cast<int32_t>(box.top);
      boxes_p[4 * b + 1] = static_cast<int32_t>(box.left);
      boxes_p[4 * b + 2] = static_cast<int32_t>(box.bottom);
      boxes_p[4 * b + 3] = static_cast<int32_t>(box.right);
      area_p[b] = static_cast<scalar_t>(box.area()) / static_cast<scalar_t>(height * width);
    }
  });
  return {boxes, area.to(lam.scalar_type())};
}

at::Tensor cutmix_mask_cpu(const at::Tensor& boxes, int64_t height, int64_t width, at::ScalarType dtype) {
  const at::Tensor boxes_c = mask_boxes_arg(boxes, height, width);
  const int64_t batch = boxes.size(0);
  at::Tensor mask = at::empty({batch, 1, height, width}, boxes.options().dtype(dtype));
  AT_DISPATCH_ALL_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, dtype, "cutmix_mask_cpu", [&] {
    const int32_t* boxes_p = boxes_c.const_data_ptr<int32_t>();
    scalar_t* out = mask.data_ptr<scalar_t>();
    const scalar_t one = static_cast<scalar_t>(1);
    // One task per sample: zeros (all bits 0 in every dtype), then ones over the box.
    at::parallel_for(0, batch, cpu::grain_for(height * width), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const detail::Box box = detail::load_box(boxes_p, b, height, width);
        scalar_t* plane = out + b * height * width;
        std::memset(static_cast<void*>(plane), 0, sizeof(scalar_t) * height * width);
        for (int64_t y = box.top; y < box.bottom; ++y)
          std::fill(plane + y * width + box.left, plane + y * width + box.right, one);
      }
    });
  });
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(mixshare_ops, CPU, m) {
  m.impl("cutmix_boxes", &cutmix_boxes_cpu);
  m.impl("cutmix_mask", &cutmix_mask_cpu);
}

}  // namespace mixshare_ops
