"""Fake (meta) kernels of the mixshare operators, and the Triton ops' autograd.

Both operator families share the fakes: the compiled ones
(``mixshare_ops::<op>``, defined in csrc/ops.cpp) and the Triton ones
(``mixshare_ops::triton_<op>``). The compiled ops have their autograd
formulas in C++ (csrc/autograd.cpp, no Python per call; a library without
them is not loaded, see :mod:`mixshare_ops._extension`); the Triton ops get
the same formulas here.

Every backward saves only the boxes, the [B, M] weights and scalars. Each
forward/backward pair is adjoint (box_mix_backward is the transpose of the
linear map box_mix, and so on), so the backward ops are differentiable too,
by the forward ops: double backward works.
"""

from __future__ import annotations

import functools
import inspect

import torch

from mixshare_ops import _extension, _layout, backends, checks
from mixshare_ops.conventions import num_subnets

# ---------------------------------------------------------------- fake kernels


def _fake_cutmix_boxes(lam, center, height, width, check_values=True):
    batch = lam.shape[0]
    return lam.new_empty((batch, 4), dtype=torch.int32), lam.new_empty((batch,))


def _fake_cutmix_mask(boxes, height, width, dtype):
    return boxes.new_empty((boxes.shape[0], 1, height, width), dtype=dtype)


def _fake_box_mix(x, boxes, inside_weight, outside_weight, scale):
    _, batch, channels, height, width = x.shape
    _, layout = _layout.stacked_layout(x)
    return _layout.empty_features(batch, channels, height, width, layout, dtype=x.dtype, device=x.device)


def _fake_box_mix_backward(grad_out, boxes, inside_weight, outside_weight, scale):
    batch, channels, height, width = grad_out.shape
    _, layout = _layout.feature_layout(grad_out, "grad_out")
    return _layout.empty_stacked(
        inside_weight.shape[1], batch, channels, height, width, layout, dtype=grad_out.dtype, device=grad_out.device
    )


def _fake_cutmix_unmix(features, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels):
    batch, num_channels, height, width = features.shape
    _, layout = _layout.feature_layout(features)
    return _layout.empty_stacked(
        num_subnets(inside_weight), batch, num_channels, height, width, layout, dtype=features.dtype, device=features.device
    )


def _fake_cutmix_unmix_backward(grad_out, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels):
    _, batch, num_channels, height, width = grad_out.shape
    _, layout = _layout.stacked_layout(grad_out, "grad_out")
    return _layout.empty_features(batch, num_channels, height, width, layout, dtype=grad_out.dtype, device=grad_out.device)


def _fake_cutmix_unmix_pool(
    features, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels, normalize
):
    batch, num_channels = features.shape[:2]
    return features.new_empty((num_subnets(inside_weight), batch, num_channels))


def _fake_cutmix_unmix_pool_backward(
    grad_out, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels, normalize,
    height, width, channels_last,
):
    _, batch, num_channels = grad_out.shape
    layout = _layout.CHANNELS_LAST if channels_last else _layout.CHANNELS_FIRST
    return _layout.empty_features(batch, num_channels, height, width, layout, dtype=grad_out.dtype, device=grad_out.device)


def _validate(name, args):
    """The operator's argument checks (:mod:`mixshare_ops.checks`), as the kernels do them."""
    if name == "cutmix_boxes":
        checks.check_box_sample(*args[:4])
    elif name == "cutmix_mask":
        checks.validate_cutmix_mask(*args[:3])
    elif name == "box_mix":
        checks.validate_box_mix(*args)
    elif name == "box_mix_backward":
        checks.validate_box_mix_backward(*args)
    elif name == "cutmix_unmix":
        checks.validate_unmix(*args[:4], tuple(args[4:6]), *args[6:8])
    elif name == "cutmix_unmix_backward":
        checks.validate_unmix_backward(*args[:4], tuple(args[4:6]), *args[6:8])
    elif name == "cutmix_unmix_pool":
        checks.validate_unmix_pool(*args[:4], tuple(args[4:6]), *args[6:9])
    else:
        checks.validate_unmix_pool_backward(*args[:4], tuple(args[4:6]), *args[6:11])


def _checked(name, fake):
    """The fake, after the checks the operator itself makes: one device for
    every tensor argument, then :func:`_validate`.

    The dispatcher runs the fake (the Meta kernel) as soon as one argument is
    a meta tensor, so this is what refuses a mix such as CPU features with
    meta boxes, which no device kernel would see; under ``torch.compile`` it
    is where a traced call meets its checks."""
    signature = inspect.signature(fake)

    @functools.wraps(fake)
    def checked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = list(bound.arguments.values())
        tensors = [(n, v) for n, v in bound.arguments.items() if isinstance(v, torch.Tensor)]
        first_name, first = tensors[0]
        for n, value in tensors[1:]:
            checks.check_same_device(value, first, n, first_name)
        _validate(name, values)
        return fake(*args, **kwargs)

    return checked


FAKES = {
    "cutmix_boxes": _fake_cutmix_boxes,
    "cutmix_mask": _fake_cutmix_mask,
    "box_mix": _fake_box_mix,
    "box_mix_backward": _fake_box_mix_backward,
    "cutmix_unmix": _fake_cutmix_unmix,
    "cutmix_unmix_backward": _fake_cutmix_unmix_backward,
    "cutmix_unmix_pool": _fake_cutmix_unmix_pool,
    "cutmix_unmix_pool_backward": _fake_cutmix_unmix_pool_backward,
}


# ------------------------------------------------------------------- autograd


def _register_triton_autograd() -> None:
    def op(name):
        return backends.op("triton", name).default

    # box_mix <-> box_mix_backward
    def save_box_mix(ctx, inputs, output):
        _, boxes, inside_weight, outside_weight, scale = inputs
        ctx.save_for_backward(boxes, inside_weight, outside_weight)
        ctx.scale = scale

    def box_mix_grad(ctx, grad):
        boxes, inside_weight, outside_weight = ctx.saved_tensors
        grad_x = op("box_mix_backward")(grad, boxes, inside_weight, outside_weight, ctx.scale)
        return grad_x, None, None, None, None

    def box_mix_backward_grad(ctx, grad):
        boxes, inside_weight, outside_weight = ctx.saved_tensors
        return op("box_mix")(grad, boxes, inside_weight, outside_weight, ctx.scale), None, None, None, None

    # cutmix_unmix <-> cutmix_unmix_backward
    def save_unmix(ctx, inputs, output):
        _, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels = inputs
        ctx.save_for_backward(boxes, inside_weight, outside_weight)
        ctx.args = (box_height, box_width, ratio, channels)

    def unmix_grad(ctx, grad):
        boxes, inside_weight, outside_weight = ctx.saved_tensors
        grad_f = op("cutmix_unmix_backward")(grad, boxes, inside_weight, outside_weight, *ctx.args)
        return (grad_f,) + (None,) * 7

    def unmix_backward_grad(ctx, grad):
        boxes, inside_weight, outside_weight = ctx.saved_tensors
        return (op("cutmix_unmix")(grad, boxes, inside_weight, outside_weight, *ctx.args),) + (None,) * 7

    # cutmix_unmix_pool <-> cutmix_unmix_pool_backward
    def save_pool(ctx, inputs, output):
        features, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels, normalize = inputs
        ctx.save_for_backward(boxes, inside_weight, outside_weight)
        ctx.args = (box_height, box_width, ratio, channels, normalize)
        ctx.shape = (features.shape[2], features.shape[3])
        ctx.channels_last = _layout.feature_layout(features)[1] == _layout.CHANNELS_LAST

    def pool_grad(ctx, grad):
        boxes, inside_weight, outside_weight = ctx.saved_tensors
        grad_f = op("cutmix_unmix_pool_backward")(
            grad, boxes, inside_weight, outside_weight, *ctx.args, *ctx.shape, ctx.channels_last
        )
        return (grad_f,) + (None,) * 8

    def save_pool_backward(ctx, inputs, output):
        _, boxes, inside_weight, outside_weight, box_height, box_width, ratio, channels, normalize = inputs[:9]
        ctx.save_for_backward(boxes, inside_weight, outside_weight)
        ctx.args = (box_height, box_width, ratio, channels, normalize)

    def pool_backward_grad(ctx, grad):
        boxes, inside_weight, outside_weight = ctx.saved_tensors
        return (op("cutmix_unmix_pool")(grad, boxes, inside_weight, outside_weight, *ctx.args),) + (None,) * 11

    ns = "mixshare_ops::triton_"
    torch.library.register_autograd(ns + "box_mix", box_mix_grad, setup_context=save_box_mix)
    torch.library.register_autograd(ns + "box_mix_backward", box_mix_backward_grad, setup_context=save_box_mix)
    torch.library.register_autograd(ns + "cutmix_unmix", unmix_grad, setup_context=save_unmix)
    torch.library.register_autograd(ns + "cutmix_unmix_backward", unmix_backward_grad, setup_context=save_unmix)
    torch.library.register_autograd(ns + "cutmix_unmix_pool", pool_grad, setup_context=save_pool)
    torch.library.register_autograd(
        ns + "cutmix_unmix_pool_backward", pool_backward_grad, setup_context=save_pool_backward
    )


def register_all() -> None:
    """Registers fakes (and, for the Triton ops, autograd) for every operator family defined here:
    the compiled ops if the extension loaded, the Triton ops if triton is installed."""
    prefixes = [""] if _extension.loaded() else []
    if backends.triton_installed():
        import mixshare_ops.triton  # noqa: F401  (defines the triton_* ops)

        prefixes.append("triton_")
    for prefix in prefixes:
        for name, fake in FAKES.items():
            torch.library.register_fake(f"mixshare_ops::{prefix}{name}", _checked(name, fake))
    if backends.triton_installed():
        _register_triton_autograd()
