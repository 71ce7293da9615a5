// Operator schemas of the mixshare_ops library.
//
// Kernels are registered per backend next to their implementation
// (csrc/cpu/*.cpp, csrc/cuda/*.cu), the autograd formulas in
// csrc/autograd.cpp; fake (meta) kernels are registered from Python
// (mixshare_ops/_registration.py).
#include <torch/library.h>

#include "cpu/parallel_info.h"
#include "op_args.h"

TORCH_LIBRARY(mixshare_ops, m) {
  m.def("cutmix_boxes(Tensor lam, Tensor center, SymInt height, SymInt width, bool check_values=True) -> (Tensor boxes, Tensor area)");
  m.def("cutmix_mask(Tensor boxes, SymInt height, SymInt width, ScalarType dtype) -> Tensor");
  m.def("box_mix(Tensor x, Tensor boxes, Tensor inside_weight, Tensor outside_weight, float scale) -> Tensor");
  m.def(
      "box_mix_backward(Tensor grad_out, Tensor boxes, Tensor inside_weight, Tensor outside_weight, float scale) "
      "-> Tensor");
  m.def(
      "cutmix_unmix(Tensor features, Tensor boxes, Tensor? inside_weight, Tensor? outside_weight, "
      "SymInt box_height, SymInt box_width, float ratio, SymInt channels) -> Tensor");
  m.def(
      "cutmix_unmix_backward(Tensor grad_out, Tensor boxes, Tensor? inside_weight, Tensor? outside_weight, "
      "SymInt box_height, SymInt box_width, float ratio, SymInt channels) -> Tensor");
  m.def(
      "cutmix_unmix_pool(Tensor features, Tensor boxes, Tensor? inside_weight, Tensor? outside_weight, "
      "SymInt box_height, SymInt box_width, float ratio, SymInt channels, str normalize) -> Tensor");
  m.def(
      "cutmix_unmix_pool_backward(Tensor grad_out, Tensor boxes, Tensor? inside_weight, Tensor? outside_weight, "
      "SymInt box_height, SymInt box_width, float ratio, SymInt channels, str normalize, SymInt height, "
      "SymInt width, bool channels_last) -> Tensor");
  // Not tensor ops: the switch of the host-side value checks of CUDA inputs
  // (mixshare_ops.set_value_checks and value_checks_enabled).
  m.def("_set_value_checks(bool enabled) -> bool", &mixshare_ops::set_value_checks);
  m.def("_value_checks_enabled() -> bool", &mixshare_ops::value_checks_enabled);
  // Not a tensor op: how many threads the CPU kernels' at::parallel_for uses.
  m.def("_cpu_parallel_for_threads(int work_items) -> int", &mixshare_ops::cpu::parallel_for_threads);
}
