"""Triton index widths and autotuning: the int64 path of every kernel, chosen from the sizes,
and an autotune key without the batch size.

Slices of 2**31 elements do not fit a CPU test, so the int64 path is forced by
lowering ``kernels.INT32_LIMIT``: the same kernels then index in int64 on small
inputs and must still match the reference."""

import pytest
import torch

import mixshare_ops
from mixshare_ops import reference
from tests.cases import MIX_CASES, UNMIX_CASES, assert_close

pytestmark = pytest.mark.skipif("triton" not in mixshare_ops.available_backends("cpu" if not torch.cuda.is_available()
                                                                                 else "cuda"),
                                reason="Triton not usable here")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MIX = [c for c in MIX_CASES if c.name in ("m3_odd", "channels_last", "transposed_channels_last")]
UNMIX = [c for c in UNMIX_CASES if c.name in ("m3_partial", "not_divisible", "channels_last_m3")]


@pytest.fixture
def kernels():
    from mixshare_ops.triton import kernels

    return kernels


@pytest.fixture(params=[False, True], ids=["int32", "int64"])
def index_width(request, kernels, monkeypatch):
    """Run the test with the default limit, then with every offset in int64."""
    if request.param:
        monkeypatch.setattr(kernels, "INT32_LIMIT", 1)
    return request.param


def _grad(out, inp):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out)
    (grad,) = torch.autograd.grad(out, inp, g)
    return grad


@pytest.mark.parametrize("case", MIX, ids=lambda c: c.name)
def test_box_mix_either_index_width(case, index_width):
    x, boxes, inside, outside, scale = case.make(torch.float32, DEVICE)
    x.requires_grad_(True)
    out = mixshare_ops.box_mix(x, boxes, inside, outside, scale, backend="triton")
    x_ref = x.detach().cpu().requires_grad_(True)
    ref = reference.box_mix(x_ref, boxes.cpu(), inside.cpu(), outside.cpu(), scale)
    assert_close(out.cpu(), ref)
    assert_close(_grad(out, x).cpu(), _grad(ref, x_ref))


@pytest.mark.parametrize("case", UNMIX, ids=lambda c: c.name)
@pytest.mark.parametrize("pool", [False, True], ids=["unmix", "pool"])
def test_unmix_either_index_width(case, pool, index_width):
    feats, boxes, inside, outside, kw = case.make(torch.float32, DEVICE)
    feats.requires_grad_(True)
    fused, spec = (mixshare_ops.cutmix_unmix_pool, reference.cutmix_unmix_pool) if pool else \
        (mixshare_ops.cutmix_unmix, reference.cutmix_unmix)
    out = fused(feats, boxes, inside, outside, backend="triton", **kw)
    f_ref = feats.detach().cpu().requires_grad_(True)
    cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
    ref = spec(f_ref, boxes.cpu(), cpu(inside), cpu(outside), **kw)
    assert_close(out.cpu(), ref)
    assert_close(_grad(out, feats).cpu(), _grad(ref, f_ref))


def test_mask_either_index_width(index_width):
    boxes = torch.tensor([[0, 0, 5, 7], [1, 2, 4, 3], [2, 2, 2, 2]], dtype=torch.int32, device=DEVICE)
    mask = mixshare_ops.cutmix_mask(boxes, 5, 7, torch.float32, backend="triton")
    assert torch.equal(mask.cpu(), reference.cutmix_mask(boxes.cpu(), 5, 7, torch.float32))


def test_int64_is_chosen_from_the_sizes(kernels):
    from mixshare_ops.triton import launch

    assert not launch._int64(2**31 - 1)
    assert launch._int64(2**31)
    assert launch._int64(10, 2**31)
    # One [1, 46341, 46341] slice has more than 2**31 elements: int64 offsets.
    assert launch._int64(46341 * 46341)
    # Window products (y + 1) * box_h on a 2**16 grid from 2**16 boxes: int64 window math.
    assert launch._int64(launch._window_bound(2**16, 8, 2**16, 8))
    assert not launch._int64(launch._window_bound(8, 8, 224, 224))


def test_autotune_key_leaves_out_the_batch(kernels):
    """A new batch size (a last partial batch, an evaluation batch) must not re-tune and synchronise."""
    assert "B" not in kernels.AUTOTUNE_KEY
    tuned = [kernels.box_mix_kernel, kernels.box_mix_backward_kernel, kernels.cutmix_unmix_kernel,
             kernels.cutmix_unmix_backward_kernel, kernels.cutmix_unmix_pool_kernel,
             kernels.cutmix_unmix_pool_backward_kernel]
    for kernel in tuned:
        arg_names = kernel.arg_names  # an Autotuner on GPUs, the JIT function here
        assert set(kernels.AUTOTUNE_KEY) <= set(arg_names), (kernel, arg_names)
        if hasattr(kernel, "keys"):  # on GPUs: the autotuner really uses that key
            assert list(kernel.keys) == kernels.AUTOTUNE_KEY
