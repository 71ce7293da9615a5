"""Hostile input to the raw operators (``torch.ops.mixshare_ops.*``, compiled and Triton): refused with
a message, never answered on the wrong device or silently wrong."""

import pytest
import torch

import mixshare_ops
from mixshare_ops import backends
from tests.cases import MIX_CASES, UNMIX_CASES

MIX = next(c for c in MIX_CASES if c.name == "m2")
UNMIX = next(c for c in UNMIX_CASES if c.name == "m3_partial")


def _raw_args():
    """{op name: positional arguments (CPU)} for every operator, from the shared sample cases."""
    x, boxes, inside, outside, scale = MIX.make()
    features_args = UNMIX.op_args()
    features = features_args[0]
    grad_pooled = torch.randn(3, *features.shape[:2])
    return {
        "cutmix_boxes": (torch.rand(4), torch.rand(4, 2), 8, 8),
        "cutmix_mask": (boxes, MIX.height, MIX.width, torch.float32),
        "box_mix": (x, boxes, inside, outside, scale),
        "box_mix_backward": (x[0], boxes, inside, outside, scale),
        "cutmix_unmix": features_args,
        "cutmix_unmix_backward": (torch.randn(3, *features.shape),) + features_args[1:],
        "cutmix_unmix_pool": UNMIX.op_args(pool=True),
        "cutmix_unmix_pool_backward": (grad_pooled,) + UNMIX.op_args(pool=True)[1:]
        + (features.shape[2], features.shape[3], False),
    }


def _op_backends():
    """The operator families: Triton, and the compiled one (``op("cpu", ...)``, any device)."""
    out = [pytest.param("triton", id="triton")]
    if mixshare_ops.backend_info()["extension_loaded"]:
        out.append(pytest.param("cpu", id="compiled"))
    return out


MIXED_DEVICE_CASES = [  # ops with two or more tensor arguments, each argument in turn
    (name, i) for name, args in _raw_args().items() for i, a in enumerate(args)
    if isinstance(a, torch.Tensor) and sum(isinstance(b, torch.Tensor) for b in args) > 1
]


@pytest.mark.parametrize("op_backend", _op_backends())
@pytest.mark.parametrize("name, index", MIXED_DEVICE_CASES, ids=lambda v: str(v))
def test_one_meta_argument_is_a_device_mismatch(op_backend, name, index):
    """One argument on meta and the rest on CPU: an error naming the devices, not a meta or
    uninitialised result."""
    args = list(_raw_args()[name])
    args[index] = args[index].to("meta")
    op = backends.op(op_backend, name)
    with pytest.raises(ValueError, match="must be on the same device as"):
        op(*args)


@pytest.mark.parametrize("op_backend", _op_backends())
@pytest.mark.parametrize("name", list(_raw_args()))
def test_all_meta_arguments_give_meta_results(op_backend, name):
    args = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in _raw_args()[name]]
    out = backends.op(op_backend, name)(*args)
    for t in out if isinstance(out, tuple) else (out,):
        assert t.device.type == "meta"


@pytest.mark.parametrize("op_backend", _op_backends())
@pytest.mark.parametrize("name", ["box_mix", "box_mix_backward"])
@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf")], ids=str)
def test_raw_box_mix_refuses_a_non_finite_scale(op_backend, name, device, scale):
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in _raw_args()[name]]
    args[4] = scale
    with pytest.raises((ValueError, RuntimeError), match="scale must be finite"):
        backends.op(op_backend, name)(*args)


@pytest.mark.parametrize("op_backend", _op_backends())
@pytest.mark.parametrize("name", ["box_mix", "box_mix_backward"])
@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("which", [2, 3], ids=["inside_weight", "outside_weight"])
def test_raw_box_mix_refuses_weights_that_require_grad(op_backend, name, device, which):
    """Their gradient would be silently dropped: the ops differentiate with respect to the features only."""
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in _raw_args()[name]]
    args[which] = args[which].clone().requires_grad_()
    with pytest.raises((ValueError, RuntimeError), match="must not require grad"):
        backends.op(op_backend, name)(*args)


def _unmix_backends():
    out = ["reference", "triton"]
    if mixshare_ops.backend_info()["cpu_kernels"]:
        out.append("cpu")
    return out


@pytest.mark.parametrize("backend", _unmix_backends())
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=str)
@pytest.mark.parametrize("side", ["inside", "outside"])
@pytest.mark.parametrize("pool", [False, True], ids=["unmix", "pool"])
def test_non_finite_weights_stay_on_their_side_of_the_box(backend, bad, side, pool):
    """A non-finite weight reaches only the mask cells whose window the box touches (inside) or
    leaves (outside): elsewhere the other weight alone, as averaging the weight map gives."""
    features = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[0, 0, 2, 2], [4, 4, 8, 8]], dtype=torch.int32)  # a quarter of the 8x8 grid
    inside, outside = torch.full((2, 2), 0.25), torch.full((2, 2), 0.75)
    (inside if side == "inside" else outside)[0, 0] = bad
    kwargs = dict(box_size=(8, 8), ratio=0.0)
    op = mixshare_ops.cutmix_unmix_pool if pool else mixshare_ops.cutmix_unmix
    out = op(features, boxes, inside, outside, backend=backend, **kwargs)
    if backend == "reference":
        masks = torch.ops.aten.isfinite(out)
        if not pool:  # the rule itself: cells away from the bad side are finite
            far = (slice(1, 4), slice(1, 4)) if side == "inside" else (slice(0, 1), slice(0, 1))
            assert masks[0, 0][:, far[0], far[1]].all()
            assert not masks[0, 0].all()
    expected = getattr(mixshare_ops.reference, op.__name__)(features, boxes, inside, outside, **kwargs)
    torch.testing.assert_close(out, expected, equal_nan=True)


def _broadcast_args(name):
    """Arguments of ``name`` whose feature input is one value broadcast (stride 0) to 20000 x 20000
    (1.6 GB once copied) and whose other arguments are small and valid."""
    big = torch.zeros(1, 1, 1, 1).expand(1, 1, 20000, 20000)
    boxes = torch.tensor([[0, 0, 100, 100]], dtype=torch.int32)
    w = torch.tensor([[1.0, 0.0]])
    if name == "box_mix":
        return (big.unsqueeze(0).expand(2, 1, 1, 20000, 20000), boxes, w, 1 - w, 2.0)
    if name == "box_mix_backward":
        return (big, boxes, w, 1 - w, 2.0)
    if name == "cutmix_unmix":
        return (big, boxes, None, None, 20000, 20000, 0.5, 1)
    if name == "cutmix_unmix_backward":
        return (big.unsqueeze(0).expand(2, 1, 1, 20000, 20000), boxes, None, None, 20000, 20000, 0.5, 1)
    return (big, boxes, None, None, 20000, 20000, 0.5, 1, "mean")


@pytest.mark.parametrize("op_backend", _op_backends())
@pytest.mark.parametrize("name", ["box_mix", "box_mix_backward", "cutmix_unmix", "cutmix_unmix_backward",
                                  "cutmix_unmix_pool"])
def test_broadcast_inputs_are_not_copied_past_the_limit(op_backend, name):
    """A stride-0 view the kernels would have to copy to more than 1 GiB is refused before any copy."""
    with pytest.raises(ValueError, match=r"broadcast \(stride-0\) view .* above the limit of 1073741824"):
        backends.op(op_backend, name)(*_broadcast_args(name))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_small_broadcast_inputs_still_work(backend):
    if backend not in mixshare_ops.available_backends("cpu"):
        pytest.skip(f"{backend} not usable here")
    features = torch.randn(1, 3, 5, 5).expand(4, 3, 5, 5)  # stride 0 over B: copied (small)
    boxes = torch.tensor([[0, 0, 2, 2], [1, 1, 5, 5], [0, 0, 0, 0], [0, 0, 5, 5]], dtype=torch.int32)
    out = mixshare_ops.cutmix_unmix(features, boxes, ratio=0.5, backend=backend)
    torch.testing.assert_close(out, mixshare_ops.reference.cutmix_unmix(features, boxes, ratio=0.5))


TOO_BIG = 2**31  # one past what int32 box coordinates hold


def _size_cases():
    boxes = torch.tensor([[0, 0, 2, 2]], dtype=torch.int32)
    features = torch.randn(1, 2, 4, 4)
    return {
        "cutmix_boxes height": ("cutmix_boxes", (torch.rand(1), torch.rand(1, 2), TOO_BIG, 8), "height"),
        "cutmix_boxes width": ("cutmix_boxes", (torch.rand(1), torch.rand(1, 2), 8, TOO_BIG), "width"),
        "cutmix_mask height": ("cutmix_mask", (boxes, TOO_BIG, 8, torch.float32), "height"),
        "cutmix_mask width": ("cutmix_mask", (boxes, 8, TOO_BIG, torch.float32), "width"),
        "unmix box height": ("cutmix_unmix", (features, boxes, None, None, TOO_BIG, 8, 0.5, 2), r"box_size\[0\]"),
        "unmix box width": ("cutmix_unmix", (features, boxes, None, None, 8, TOO_BIG, 0.5, 2), r"box_size\[1\]"),
        "pool box height": ("cutmix_unmix_pool", (features, boxes, None, None, TOO_BIG, 8, 0.5, 2, "mean"),
                            r"box_size\[0\]"),
        "pool box width": ("cutmix_unmix_pool", (features, boxes, None, None, 8, 2**62, 0.5, 2, "mean"),
                           r"box_size\[1\]"),
    }


@pytest.mark.parametrize("op_backend", _op_backends())
@pytest.mark.parametrize("case", list(_size_cases()))
def test_grid_sizes_past_int32_boxes_are_refused(op_backend, case):
    """Boxes are int32 pixel coordinates: a grid of 2**31 or more is refused with the limit, never
    answered with wrapped boxes or NaN masks."""
    name, args, what = _size_cases()[case]
    with pytest.raises(ValueError, match=rf"{what} must be in \[1, 2147483647\]"):
        backends.op(op_backend, name)(*args)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_public_ops_refuse_grid_sizes_past_int32(backend):
    if backend not in mixshare_ops.available_backends("cpu"):
        pytest.skip(f"{backend} not usable here")
    with pytest.raises(ValueError, match=r"height must be in \[1, 2147483647\]"):
        mixshare_ops.cutmix_boxes(torch.rand(1), torch.rand(1, 2), TOO_BIG, 8, backend=backend)
    with pytest.raises(ValueError, match=r"box_size\[1\] must be in \[1, 2147483647\]"):
        mixshare_ops.cutmix_unmix(torch.randn(1, 2, 4, 4), torch.zeros(1, 4, dtype=torch.int32),
                                  box_size=(8, TOO_BIG), backend=backend)
