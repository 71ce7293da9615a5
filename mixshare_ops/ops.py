"""Public entry points: pick a backend, call its operator.

Every function takes ``backend=`` (``"cuda"``, ``"triton"``, ``"cpu"``,
``"reference"``; default: automatic, see :mod:`mixshare_ops.backends`).
Shapes are given in the docstrings; see :mod:`mixshare_ops.reference` for the
exact semantics.

Arguments are checked once per call. The operators of the ``cuda``, ``cpu``
and ``triton`` backends check their own arguments (csrc/op_args.cpp, and
:mod:`mixshare_ops.checks` for the Triton operators and the fake kernels that
``torch.compile`` traces); the ``reference`` backend has no operator, so its
calls run :mod:`mixshare_ops.checks` here. A wrapper itself checks only what
no operator can: the Python types of the arguments (the operator schemas take
``True`` for a float or an int and answer a wrong type without naming the
rule), that every tensor argument is on the device the backend was chosen
for, and the arguments that exist in the public API only (``box_size``,
``channels=None``, ``dtype``, ``sample_cutmix_boxes``' ``batch`` and
``alpha``, ``cutmix_mix``'s ``x0`` and ``x1``) and, given ``plan=``, that the
plan is unchanged since it was built and fits the input (batch, device, M,
grid): see :func:`_from_plan`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from mixshare_ops import checks, reference
from mixshare_ops.backends import op, select_backend
from mixshare_ops.conventions import DEFAULT_NORMALIZE
from mixshare_ops.plan import MixPlan

Tensor = torch.Tensor


def _is_int(value) -> bool:
    return isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool)


def _is_float(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked_backend(backend, validate, args, tensors, optional=(), ints=(), floats=(), strs=()) -> str:
    """The backend of a call whose tensor arguments are ``tensors`` ((name, value) pairs; the
    first one's device chooses the backend) and ``optional`` (the same, None allowed).

    Where an argument has the wrong Python type, ``validate(*args)`` (the operator's checks in
    :mod:`mixshare_ops.checks`) raises the error that names it. The ``reference`` backend runs
    ``validate`` on every call; the other backends' operators check the rest themselves.
    """
    typed = (
        all(isinstance(t, torch.Tensor) for _, t in tensors)
        and all(t is None or isinstance(t, torch.Tensor) for _, t in optional)
        and all(_is_int(v) for v in ints)
        and all(_is_float(v) for v in floats)
        and all(isinstance(v, str) for v in strs)
    )
    if not typed:
        validate(*args)  # raises the TypeError or ValueError naming the argument
        raise AssertionError(f"{validate.__name__} accepted an argument of the wrong type")
    first_name, first = tensors[0]
    backend = select_backend(first.device, backend)
    if backend == "reference":
        validate(*args)
    else:
        for name, t in list(tensors[1:]) + [(n, t) for n, t in optional if t is not None]:
            checks.check_same_device(t, first, name, first_name)
    return backend


def _check_reference_values(fn, *args) -> None:
    # Value checks read data; under torch.compile the other backends make
    # them inside their (opaque) operators, the traced reference skips them.
    if not torch.compiler.is_compiling():
        fn(*args)


def cutmix_boxes(
    lam: Tensor,
    center: Tensor,
    height: int,
    width: int,
    *,
    check_values: bool = True,
    backend: Optional[str] = None,
):
    """CutMix boxes by the MixMo/CutMix rule.

    lam: [B] target ratios in [0, 1]; center: [B, 2] uniforms in [0, 1) (row,
    column). Returns ``boxes`` int32 [B, 4] (top, left, bottom, right) and
    ``area`` [B] (realised box area / (height * width), dtype of ``lam``).
    ``check_values=False`` is this call's own opt-out of the range checks of
    ``lam`` and ``center`` (a host sync on CUDA), for values valid by
    construction; out-of-range values are then clamped. The switch for every
    op is :func:`mixshare_ops.value_checks`.
    """
    return _cutmix_boxes(lam, center, height, width, backend=backend, check_values=check_values)


def _cutmix_boxes(lam, center, height, width, *, backend, check_values):
    backend = _checked_backend(
        backend, checks.check_box_sample, (lam, center, height, width),
        tensors=(("lam", lam), ("center", center)), ints=(height, width),
    )
    if backend == "reference":
        if check_values:
            _check_reference_values(checks.check_box_sample_values, lam, center)
        return reference.cutmix_boxes(lam, center, height, width)
    return op(backend, "cutmix_boxes")(lam, center, height, width, bool(check_values))


def sample_cutmix_boxes(
    batch: int,
    height: int,
    width: int,
    alpha: float = 2.0,
    *,
    generator: Optional[torch.Generator] = None,
    device=None,
    backend: Optional[str] = None,
):
    """Random CutMix boxes drawn on ``device``: ``lam ~ Beta(alpha, alpha)``.

    Returns ``(boxes [B, 4] int32, area [B] float32, lam [B] float32)``. All
    randomness comes from torch's RNG on the target device (``generator`` if
    given), so one seed gives the same boxes on every backend; nothing is
    copied to or from the host.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise ValueError(f"batch must be a non-negative int, got {batch!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha must be a positive float, got {alpha!r}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    concentration = torch.full((batch, 2), float(alpha), device=device)
    lam = torch._sample_dirichlet(concentration, generator=generator)[:, 0]
    center = torch.rand((batch, 2), generator=generator, device=device)
    # Values are valid by construction: skip the checks (a sync on CUDA).
    boxes, area = _cutmix_boxes(lam, center, height, width, backend=backend, check_values=False)
    return boxes, area, lam


def cutmix_mask(
    boxes: Tensor, height: int, width: int, dtype: torch.dtype = torch.float32, *, backend: Optional[str] = None
) -> Tensor:
    """[B, 1, H, W] mask of ``dtype``: 1 inside each sample's box, 0 outside."""
    backend = _checked_backend(
        backend, checks.validate_cutmix_mask, (boxes, height, width), tensors=(("boxes", boxes),), ints=(height, width)
    )
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    if backend == "reference":
        _check_reference_values(checks.check_box_values, boxes, height, width)
        return reference.cutmix_mask(boxes, height, width, dtype)
    return op(backend, "cutmix_mask")(boxes, height, width, dtype)


def _from_plan(plan, op: str, given: dict, data, data_name: str) -> None:
    """Refuses a call that passes ``plan`` and also one of the arguments the plan holds, a plan changed
    in place since it was built, and a plan made for another batch, device or number of inputs than
    ``data`` (the tensor the op mixes or unmixes). Metadata only: no host sync."""
    if not isinstance(plan, MixPlan):
        raise TypeError(f"plan must be a mixshare_ops.MixPlan, got {type(plan).__name__}")
    twice = [name for name, value in given.items() if value is not None]
    if twice:
        raise ValueError(f"{op}: pass either plan or {', '.join(twice)}, not both (the plan holds them)")
    if not torch.compiler.is_compiling():
        plan.check_unchanged()
    if not isinstance(data, torch.Tensor) or data.dim() < 2:
        return  # refused with the argument named by the op's own checks
    batch_dim = 1 if data_name == "x" else 0
    if data.device != plan.boxes.device:
        raise ValueError(f"{op}: plan is on {plan.boxes.device}, {data_name} on {data.device}: a plan mixes "
                         f"the batch it was drawn for, on its device")
    if data.shape[batch_dim] != plan.rows:
        raise ValueError(f"{op}: plan was drawn for a batch of R = {plan.rows} rows, {data_name} has "
                         f"{data.shape[batch_dim]} (shape {tuple(data.shape)})")
    if data_name == "x":
        if data.shape[0] != plan.num_subnets:
            raise ValueError(f"{op}: plan mixes M = {plan.num_subnets} inputs, x stacks {data.shape[0]} "
                             f"(shape {tuple(data.shape)})")
        if data.dim() == 5 and tuple(data.shape[3:]) != plan.grid:
            raise ValueError(f"{op}: plan.grid {plan.grid} must be x's spatial size, got "
                             f"{tuple(data.shape[3:])}: the plan's boxes live on the grid it was drawn for")


def box_mix(
    x: Tensor,
    boxes: Optional[Tensor] = None,
    inside_weight: Optional[Tensor] = None,
    outside_weight: Optional[Tensor] = None,
    scale: Optional[float] = None,
    *,
    plan: Optional[MixPlan] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """Masked mixing of M inputs: x [M, B, C, H, W] -> [B, C, H, W].

    ``out = scale * sum_i w_i * x[i]`` with ``w_i = inside_weight[b, i]``
    inside box b and ``outside_weight[b, i]`` outside; weights are [B, M];
    ``scale`` defaults to 1. MIMO summing: weights 1/M, scale M. Cut-MixMo
    (M = 2): inside (1, 0), outside (0, 1), scale 2. ``plan``: a
    :class:`MixPlan` giving boxes, weights and scale instead. Differentiable
    with respect to ``x``.
    """
    if plan is not None:
        _from_plan(plan, "box_mix", dict(boxes=boxes, inside_weight=inside_weight, outside_weight=outside_weight,
                                         scale=scale), x, "x")
        boxes, inside_weight, outside_weight, scale = plan.boxes, plan.inside, plan.outside, plan.scale
    scale = 1.0 if scale is None else scale
    backend = _checked_backend(
        backend, checks.validate_box_mix, (x, boxes, inside_weight, outside_weight, scale),
        tensors=(("x", x), ("boxes", boxes), ("inside_weight", inside_weight), ("outside_weight", outside_weight)),
        floats=(scale,),
    )
    if backend == "reference":
        _check_reference_values(checks.check_box_values, boxes, x.shape[3], x.shape[4])
        return reference.box_mix(x, boxes, inside_weight, outside_weight, scale)
    return op(backend, "box_mix")(x, boxes, inside_weight, outside_weight, float(scale))


def cutmix_mix(x0: Tensor, x1: Tensor, boxes: Tensor, scale: float = 2.0, *, backend: Optional[str] = None) -> Tensor:
    """Cut-MixMo for M = 2: ``scale * (m * x0 + (1 - m) * x1)``, x0, x1 [B, C, H, W].

    Stacks its inputs (one copy); pass a stacked [2, B, C, H, W] tensor (or a
    [B, 2, C, H, W] tensor transposed) to :func:`box_mix` to avoid it.
    """
    checks.check_features(x0, "x0")
    checks.check_features(x1, "x1")
    if x0.shape != x1.shape or x0.dtype != x1.dtype or x0.device != x1.device:
        raise ValueError(
            f"x0 and x1 must have the same shape, dtype and device, got {tuple(x0.shape)} {x0.dtype} {x0.device} "
            f"and {tuple(x1.shape)} {x1.dtype} {x1.device}"
        )
    eye = torch.eye(2, device=x0.device)
    batch = x0.shape[0]
    return box_mix(
        torch.stack([x0, x1]), boxes, eye[0].expand(batch, 2), eye[1].expand(batch, 2), scale, backend=backend
    )


def _unmix_plan(plan, op, features, boxes, inside_weight, outside_weight, box_size, ratio, channels, normalize):
    """The unmixing arguments, from ``plan`` or as given (defaults: ratio 0, normalize
    :data:`~mixshare_ops.conventions.DEFAULT_NORMALIZE`)."""
    if plan is None:
        return (boxes, inside_weight, outside_weight, box_size, 0.0 if ratio is None else ratio, channels,
                DEFAULT_NORMALIZE if normalize is None else normalize)
    _from_plan(plan, op, dict(boxes=boxes, inside_weight=inside_weight, outside_weight=outside_weight,
                              box_size=box_size, ratio=ratio, channels=channels, normalize=normalize),
               features, "features")
    if plan.unmix is None:
        raise ValueError(f"{op}: the plan does not unmix (its method mixes only)")
    if isinstance(features, torch.Tensor) and features.dim() == 4:
        size = tuple(features.shape[2:])
        if plan.grid[0] < size[0] or plan.grid[1] < size[1]:
            raise ValueError(f"{op}: plan.grid {plan.grid} (the mixing grid) must be at least features' spatial "
                             f"size {size}: unmixing averages the plan's masks down to the final map")
        if plan.unmix.channels > features.shape[1]:
            raise ValueError(f"{op}: plan.unmix.channels = {plan.unmix.channels} must be at most features' "
                             f"C = {features.shape[1]}: the plan was drawn for another model")
    return (plan.boxes, plan.inside, plan.outside, plan.grid, plan.unmix.ratio, plan.unmix.channels,
            plan.unmix.normalize)


def _unmix_args(features, box_size, channels):
    """``box_size`` as a pair and ``channels`` as an int, their defaults taken from ``features``."""
    if not isinstance(features, torch.Tensor):
        return box_size, channels  # refused by the type checks of _checked_backend
    if features.dim() != 4:
        checks.check_features(features, "features")  # raises: no feature size to take defaults from
    box_size = tuple(features.shape[2:]) if box_size is None else tuple(box_size)
    if len(box_size) != 2:
        raise ValueError(f"box_size must be a pair (height, width), got {box_size}")
    channels = features.shape[1] if channels is None else channels
    return box_size, channels


def _unmix_backend(backend, validate, args, strs=()):
    features, boxes, inside_weight, outside_weight, box_size, ratio, channels = args[:7]
    return _checked_backend(
        backend, validate, args,
        tensors=(("features", features), ("boxes", boxes)),
        optional=(("inside_weight", inside_weight), ("outside_weight", outside_weight)),
        ints=box_size + (channels,) if isinstance(features, torch.Tensor) else (None,),
        floats=(ratio,),
        strs=strs,
    )


def _unmix_op(name, features, boxes, inside_weight, outside_weight, box_size, ratio, channels, normalize, plan,
              backend):
    """``name`` (cutmix_unmix, or cutmix_unmix_pool, which alone takes ``normalize``) on its arguments,
    taken from ``plan`` or as given, checked, on the chosen backend."""
    pool = name == "cutmix_unmix_pool"
    boxes, inside_weight, outside_weight, box_size, ratio, channels, normalize = _unmix_plan(
        plan, name, features, boxes, inside_weight, outside_weight, box_size, ratio, channels, normalize)
    box_size, channels = _unmix_args(features, box_size, channels)
    extra = (normalize,) if pool else ()
    args = (features, boxes, inside_weight, outside_weight, box_size, ratio, channels) + extra
    backend = _unmix_backend(backend, checks.validate_unmix_pool if pool else checks.validate_unmix, args, strs=extra)
    if backend == "reference":
        _check_reference_values(checks.check_box_values, boxes, *box_size)
        return getattr(reference, name)(features, boxes, inside_weight, outside_weight, box_size=box_size, ratio=ratio,
                                        channels=channels, **({"normalize": normalize} if pool else {}))
    return op(backend, name)(features, boxes, inside_weight, outside_weight, box_size[0], box_size[1], float(ratio),
                             channels, *extra)


def cutmix_unmix(
    features: Tensor,
    boxes: Optional[Tensor] = None,
    inside_weight: Optional[Tensor] = None,
    outside_weight: Optional[Tensor] = None,
    *,
    box_size: Optional[Sequence[int]] = None,
    ratio: Optional[float] = None,
    channels: Optional[int] = None,
    plan: Optional[MixPlan] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """MixShare unmixing with fadeout: features [B, C, h, w] -> [M, B, C, h, w].

    Subnetwork i's mask is its weight map on the ``box_size`` grid (default:
    the feature size) averaged down to (h, w) as adaptive_avg_pool2d does; the
    first ``channels`` channels (default all) are multiplied by
    ``m_i + ratio * (1 - m_i)`` (``ratio`` default 0), the others pass
    through. Default weights: M = 2, the box is subnetwork 0's. ``plan``: a
    :class:`MixPlan` giving boxes, weights, ``box_size`` (its grid), ratio and
    channels instead. Differentiable with respect to ``features``.
    """
    return _unmix_op("cutmix_unmix", features, boxes, inside_weight, outside_weight, box_size, ratio, channels,
                     None, plan, backend)


def cutmix_unmix_pool(
    features: Tensor,
    boxes: Optional[Tensor] = None,
    inside_weight: Optional[Tensor] = None,
    outside_weight: Optional[Tensor] = None,
    *,
    box_size: Optional[Sequence[int]] = None,
    ratio: Optional[float] = None,
    channels: Optional[int] = None,
    normalize: Optional[str] = None,
    plan: Optional[MixPlan] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """Unmixing fused with global average pooling: [B, C, h, w] -> [M, B, C].

    Never materialises the M masked maps. ``normalize`` (the modes and their
    meaning: :data:`~mixshare_ops.conventions.NORMALIZE_MEANINGS`): ``"mean"``
    divides by ``h * w``; ``"masked"`` by the sum of the applied mask over
    (h, w) (by ``h * w`` where that sum is 0). The default here is
    ``"masked"`` (:data:`~mixshare_ops.conventions.DEFAULT_NORMALIZE`), while
    mixshare's training config (``unmix_normalize``) defaults to ``"mean"``; a
    ``plan`` carries its method's setting, with the boxes, weights,
    ``box_size`` (its grid), ratio and channels. Differentiable with respect
    to ``features``.
    """
    return _unmix_op("cutmix_unmix_pool", features, boxes, inside_weight, outside_weight, box_size, ratio, channels,
                     normalize, plan, backend)
