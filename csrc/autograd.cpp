// Autograd formulas of the compiled operators (mixshare_ops::<op>), for every
// device: one kernel at the Autograd key, in C++, so that a differentiable
// call runs no Python.
// The Triton operators (mixshare_ops::triton_<op>) keep theirs in
// mixshare_ops/_registration.py; the formulas are the same.
//
// Each forward/backward pair is adjoint (box_mix_backward is the transpose of
// the linear map box_mix, and so on), so each backward is computed by its
// partner op, called through the dispatcher: the backward ops are
// differentiable too and double backward works. Only the boxes, the [B, M]
// weights and scalars are saved, never a feature tensor.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>

namespace mixshare_ops {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptionalTensor = std::optional<Tensor>;

using BoxMixSignature = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double);
using UnmixSignature = Tensor(const Tensor&, const Tensor&, const OptionalTensor&, const OptionalTensor&, c10::SymInt,
                              c10::SymInt, double, c10::SymInt);
using PoolSignature = Tensor(const Tensor&, const Tensor&, const OptionalTensor&, const OptionalTensor&, c10::SymInt,
                             c10::SymInt, double, c10::SymInt, c10::string_view);
using PoolBackwardSignature = Tensor(const Tensor&, const Tensor&, const OptionalTensor&, const OptionalTensor&,
                                     c10::SymInt, c10::SymInt, double, c10::SymInt, c10::string_view, c10::SymInt,
                                     c10::SymInt, bool);

template <class Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// An undefined saved tensor stands for an absent optional weight.
OptionalTensor as_optional(const Tensor& t) { return t.defined() ? OptionalTensor(t) : std::nullopt; }

// Saved in every unmixing context: the boxes, the optional weights and the
// scalars shared by the unmixing ops.
void save_unmix_args(AutogradContext* ctx, const Tensor& boxes, const OptionalTensor& inside_weight,
                     const OptionalTensor& outside_weight, const c10::SymInt& box_height,
                     const c10::SymInt& box_width, double ratio, const c10::SymInt& channels) {
  ctx->save_for_backward({boxes, inside_weight.value_or(Tensor()), outside_weight.value_or(Tensor())});
  ctx->saved_data["box_height"] = box_height;
  ctx->saved_data["box_width"] = box_width;
  ctx->saved_data["ratio"] = ratio;
  ctx->saved_data["channels"] = channels;
}

struct SavedUnmixArgs {
  Tensor boxes;
  OptionalTensor inside_weight, outside_weight;
  c10::SymInt box_height, box_width;
  double ratio;
  c10::SymInt channels;
};

SavedUnmixArgs saved_unmix_args(AutogradContext* ctx) {
  const variable_list saved = ctx->get_saved_variables();
  return {saved[0],
          as_optional(saved[1]),
          as_optional(saved[2]),
          ctx->saved_data["box_height"].toSymInt(),
          ctx->saved_data["box_width"].toSymInt(),
          ctx->saved_data["ratio"].toDouble(),
          ctx->saved_data["channels"].toSymInt()};
}

// Gradient for the first input only; the rest (boxes, weights, scalars) get none.
variable_list first_input_grad(Tensor grad, size_t num_inputs) {
  variable_list grads(num_inputs);
  grads[0] = std::move(grad);
  return grads;
}

// box_mix (Transposed = false) and box_mix_backward (Transposed = true).
template <bool Transposed>
struct BoxMixFunction : torch::autograd::Function<BoxMixFunction<Transposed>> {
  static c10::TypedOperatorHandle<BoxMixSignature> op(bool transposed) {
    static const auto forward_op = find_op<BoxMixSignature>("mixshare_ops::box_mix");
    static const auto backward_op = find_op<BoxMixSignature>("mixshare_ops::box_mix_backward");
    return transposed ? backward_op : forward_op;
  }

  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& boxes, const Tensor& inside_weight,
                        const Tensor& outside_weight, double scale) {
    ctx->save_for_backward({boxes, inside_weight, outside_weight});
    ctx->saved_data["scale"] = scale;
    at::AutoDispatchBelowADInplaceOrView guard;
    return op(Transposed).call(x, boxes, inside_weight, outside_weight, scale);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    Tensor grad = op(!Transposed).call(grad_outputs[0], saved[0], saved[1], saved[2],
                                       ctx->saved_data["scale"].toDouble());
    return first_input_grad(std::move(grad), 5);
  }
};

// cutmix_unmix (Transposed = false) and cutmix_unmix_backward (Transposed = true).
template <bool Transposed>
struct UnmixFunction : torch::autograd::Function<UnmixFunction<Transposed>> {
  static c10::TypedOperatorHandle<UnmixSignature> op(bool transposed) {
    static const auto forward_op = find_op<UnmixSignature>("mixshare_ops::cutmix_unmix");
    static const auto backward_op = find_op<UnmixSignature>("mixshare_ops::cutmix_unmix_backward");
    return transposed ? backward_op : forward_op;
  }

  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& boxes,
                        const OptionalTensor& inside_weight, const OptionalTensor& outside_weight,
                        c10::SymInt box_height, c10::SymInt box_width, double ratio, c10::SymInt channels) {
    save_unmix_args(ctx, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels);
    at::AutoDispatchBelowADInplaceOrView guard;
    return op(Transposed).call(input, boxes, inside_weight, outside_weight, std::move(box_height),
                               std::move(box_width), ratio, std::move(channels));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    SavedUnmixArgs a = saved_unmix_args(ctx);
    Tensor grad = op(!Transposed).call(grad_outputs[0], a.boxes, a.inside_weight, a.outside_weight, a.box_height,
                                       a.box_width, a.ratio, a.channels);
    return first_input_grad(std::move(grad), 8);
  }
};

const c10::TypedOperatorHandle<PoolSignature>& pool_op() {
  static const auto op = find_op<PoolSignature>("mixshare_ops::cutmix_unmix_pool");
  return op;
}

const c10::TypedOperatorHandle<PoolBackwardSignature>& pool_backward_op() {
  static const auto op = find_op<PoolBackwardSignature>("mixshare_ops::cutmix_unmix_pool_backward");
  return op;
}

// Whether the kernels treat a [B, C, H, W] tensor as channels_last (as
// feature_arg in op_args.cpp and mixshare_ops/_layout.py do).
bool is_channels_last_features(const Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

struct PoolFunction : torch::autograd::Function<PoolFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& features, const Tensor& boxes,
                        const OptionalTensor& inside_weight, const OptionalTensor& outside_weight,
                        c10::SymInt box_height, c10::SymInt box_width, double ratio, c10::SymInt channels,
                        c10::string_view normalize) {
    save_unmix_args(ctx, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels);
    ctx->saved_data["normalize"] = std::string(normalize);
    Tensor pooled;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      pooled = pool_op().call(features, boxes, inside_weight, outside_weight, std::move(box_height),
                              std::move(box_width), ratio, std::move(channels), normalize);
    }
    // After the operator has checked that features is [B, C, H, W].
    ctx->saved_data["height"] = features.sym_size(2);
    ctx->saved_data["width"] = features.sym_size(3);
    ctx->saved_data["channels_last"] = is_channels_last_features(features);
    return pooled;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    SavedUnmixArgs a = saved_unmix_args(ctx);
    const std::string normalize = ctx->saved_data["normalize"].toStringRef();
    Tensor grad = pool_backward_op().call(grad_outputs[0], a.boxes, a.inside_weight, a.outside_weight, a.box_height,
                                          a.box_width, a.ratio, a.channels, normalize,
                                          ctx->saved_data["height"].toSymInt(), ctx->saved_data["width"].toSymInt(),
                                          ctx->saved_data["channels_last"].toBool());
    return first_input_grad(std::move(grad), 9);
  }
};

// The adjoint of the pooling is the pooling: its gradient is cutmix_unmix_pool
// of the incoming [B, C, H, W] gradient.
struct PoolBackwardFunction : torch::autograd::Function<PoolBackwardFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& grad_out, const Tensor& boxes,
                        const OptionalTensor& inside_weight, const OptionalTensor& outside_weight,
                        c10::SymInt box_height, c10::SymInt box_width, double ratio, c10::SymInt channels,
                        c10::string_view normalize, c10::SymInt height, c10::SymInt width, bool channels_last) {
    save_unmix_args(ctx, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels);
    ctx->saved_data["normalize"] = std::string(normalize);
    at::AutoDispatchBelowADInplaceOrView guard;
    return pool_backward_op().call(grad_out, boxes, inside_weight, outside_weight, std::move(box_height),
                                   std::move(box_width), ratio, std::move(channels), normalize, std::move(height),
                                   std::move(width), channels_last);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    SavedUnmixArgs a = saved_unmix_args(ctx);
    const std::string normalize = ctx->saved_data["normalize"].toStringRef();
    Tensor grad = pool_op().call(grad_outputs[0], a.boxes, a.inside_weight, a.outside_weight, a.box_height,
                                 a.box_width, a.ratio, a.channels, normalize);
    return first_input_grad(std::move(grad), 12);
  }
};

Tensor box_mix_autograd(const Tensor& x, const Tensor& boxes, const Tensor& inside_weight,
                        const Tensor& outside_weight, double scale) {
  return BoxMixFunction<false>::apply(x, boxes, inside_weight, outside_weight, scale);
}

Tensor box_mix_backward_autograd(const Tensor& grad_out, const Tensor& boxes, const Tensor& inside_weight,
                                 const Tensor& outside_weight, double scale) {
  return BoxMixFunction<true>::apply(grad_out, boxes, inside_weight, outside_weight, scale);
}

Tensor cutmix_unmix_autograd(const Tensor& features, const Tensor& boxes, const OptionalTensor& inside_weight,
                             const OptionalTensor& outside_weight, c10::SymInt box_height, c10::SymInt box_width,
                             double ratio, c10::SymInt channels) {
  return UnmixFunction<false>::apply(features, boxes, inside_weight, outside_weight, std::move(box_height),
                                     std::move(box_width), ratio, std::move(channels));
}

Tensor cutmix_unmix_backward_autograd(const Tensor& grad_out, const Tensor& boxes,
                                      const OptionalTensor& inside_weight, const OptionalTensor& outside_weight,
                                      c10::SymInt box_height, c10::SymInt box_width, double ratio,
                                      c10::SymInt channels) {
  return UnmixFunction<true>::apply(grad_out, boxes, inside_weight, outside_weight, std::move(box_height),
                                    std::move(box_width), ratio, std::move(channels));
}

Tensor cutmix_unmix_pool_autograd(const Tensor& features, const Tensor& boxes, const OptionalTensor& inside_weight,
                                  const OptionalTensor& outside_weight, c10::SymInt box_height,
                                  c10::SymInt box_width, double ratio, c10::SymInt channels,
                                  c10::string_view normalize) {
  return PoolFunction::apply(features, boxes, inside_weight, outside_weight, std::move(box_height),
                             std::move(box_width), ratio, std::move(channels), normalize);
}

Tensor cutmix_unmix_pool_backward_autograd(const Tensor& grad_out, const Tensor& boxes,
                                           const OptionalTensor& inside_weight, const OptionalTensor& outside_weight,
                                           c10::SymInt box_height, c10::SymInt box_width, double ratio,
                                           c10::SymInt channels, c10::string_view normalize, c10::SymInt height,
                                           c10::SymInt width, bool channels_last) {
  return PoolBackwardFunction::apply(grad_out, boxes, inside_weight, outside_weight, std::move(box_height),
                                     std::move(box_width), ratio, std::move(channels), normalize,
                                     std::move(height), std::move(width), channels_last);
}

}  // namespace

TORCH_LIBRARY_IMPL(mixshare_ops, Autograd, m) {
  m.impl("box_mix", &box_mix_autograd);
  m.impl("box_mix_backward", &box_mix_backward_autograd);
  m.impl("cutmix_unmix", &cutmix_unmix_autograd);
  m.impl("cutmix_unmix_backward", &cutmix_unmix_backward_autograd);
  m.impl("cutmix_unmix_pool", &cutmix_unmix_pool_autograd);
  m.impl("cutmix_unmix_pool_backward", &cutmix_unmix_pool_backward_autograd);
}

}  // namespace mixshare_ops
