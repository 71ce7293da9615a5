"""Gradients: float64 gradcheck and gradgradcheck, and what backward keeps alive."""

import pytest
import torch

import mixshare_ops
from tests.cases import MIX_CASES, UNMIX_CASES, backend_params

ALL_BACKENDS = backend_params() + [pytest.param("reference", "cpu", id="reference-cpu")]
GRAD_MIX = [c for c in MIX_CASES if c.name in ("m3_odd", "channels_last", "transposed")]
GRAD_UNMIX = [c for c in UNMIX_CASES if c.name in ("default", "m3_partial", "not_divisible", "channels_last")]


def _check_grads(fn, inp, backend):
    # The reference is differentiated by autograd itself: one fast gradcheck
    # suffices. The fused ops get first and second derivatives checked; under
    # the Triton interpreter (one forward costs ~1 s) with gradcheck's fast
    # mode, which compares random projections of the Jacobians.
    if backend == "reference":
        assert torch.autograd.gradcheck(fn, (inp,), fast_mode=True)
        return
    fast = backend == "triton" and inp.device.type == "cpu"
    assert torch.autograd.gradcheck(fn, (inp,), fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, (inp,), fast_mode=fast)


def _f64_backend(backend, device):
    if backend == "cuda":
        pytest.skip("the cuda backend is checked against the reference in float32 (test_ops_correctness)")


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("case", GRAD_MIX, ids=lambda c: c.name)
def test_box_mix_gradcheck(backend, device, case):
    _f64_backend(backend, device)
    x, boxes, inside, outside, scale = case.make(torch.float64, device)
    x.requires_grad_(True)
    fn = lambda x: mixshare_ops.box_mix(x, boxes, inside, outside, scale, backend=backend)  # noqa: E731
    _check_grads(fn, x, backend)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("case", GRAD_UNMIX, ids=lambda c: c.name)
@pytest.mark.parametrize("op", ["cutmix_unmix", "cutmix_unmix_pool"])
def test_unmix_gradcheck(backend, device, case, op):
    _f64_backend(backend, device)
    feats, boxes, inside, outside, kw = case.make(torch.float64, device)
    feats.requires_grad_(True)
    fn = lambda f: getattr(mixshare_ops, op)(f, boxes, inside, outside, backend=backend, **kw)  # noqa: E731
    _check_grads(fn, feats, backend)


class SavedTensors:
    """Records every tensor autograd saves for backward."""

    def __init__(self):
        self.saved = []

    def pack(self, t):
        self.saved.append((tuple(t.shape), t.numel() * t.element_size()))
        return t

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


@pytest.mark.parametrize("backend,device", backend_params())
def test_backward_saves_only_boxes_and_weights(backend, device):
    """O(B * M) bytes saved for backward: never a mask, never an input copy."""
    batch, subnets = 8, 3
    x = torch.randn(subnets, batch, 16, 32, 32, device=device, requires_grad=True)
    boxes, _, _ = mixshare_ops.sample_cutmix_boxes(batch, 32, 32, device=device)
    inside = torch.rand(batch, subnets, device=device)
    outside = torch.rand(batch, subnets, device=device)
    feats = torch.randn(batch, 64, 8, 8, device=device, requires_grad=True)
    bound = batch * (4 * 4 + 2 * subnets * 8)  # boxes (int32) + two weight tensors (up to float64)
    ops = [
        lambda: mixshare_ops.box_mix(x, boxes, inside, outside, 3.0, backend=backend),
        lambda: mixshare_ops.cutmix_unmix(feats, boxes, box_size=(32, 32), ratio=0.5, backend=backend),
        lambda: mixshare_ops.cutmix_unmix(feats, boxes, inside, outside, box_size=(32, 32), backend=backend),
        lambda: mixshare_ops.cutmix_unmix_pool(feats, boxes, inside, outside, box_size=(32, 32), backend=backend),
    ]
    for op in ops:
        with SavedTensors() as rec:
            out = op()
        assert rec.saved, "expected the boxes to be saved"
        total = sum(nbytes for _, nbytes in rec.saved)
        assert total <= bound, f"saved {rec.saved} ({total} bytes) for backward, expected O(B * M) <= {bound}"
        out.sum().backward()


def test_reference_saves_dense_tensors():
    """The bound above is a real test: the plain reference saves far more."""
    feats = torch.randn(8, 64, 8, 8, requires_grad=True)
    boxes, _, _ = mixshare_ops.sample_cutmix_boxes(8, 32, 32)
    with SavedTensors() as rec:
        mixshare_ops.cutmix_unmix(feats, boxes, box_size=(32, 32), backend="reference")
    assert sum(nbytes for _, nbytes in rec.saved) > 8 * 4 * 4 + 8 * 2 * 2 * 8


def test_weights_requiring_grad_are_refused():
    x = torch.randn(2, 3, 4, 5, 5)
    boxes = torch.zeros(3, 4, dtype=torch.int32)
    w = torch.rand(3, 2, requires_grad=True)
    with pytest.raises(ValueError, match="inside_weight must not require grad"):
        mixshare_ops.box_mix(x, boxes, w, w.detach())
