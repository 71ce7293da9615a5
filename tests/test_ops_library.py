"""The operators as torch.library ops: opcheck and torch.compile(fullgraph=True)."""

import pytest
import torch

import mixshare_ops
from mixshare_ops.backends import op as _op
from tests.cases import MIX_CASES, UNMIX_CASES, backend_params

OPCHECK_MIX = [c for c in MIX_CASES if c.name in ("m2", "m3_odd", "transposed_channels_last", "batch0")]
OPCHECK_UNMIX = [c for c in UNMIX_CASES if c.name in ("default", "m3_partial", "channels_last_m3", "batch0")]


def _opcheck(op, args, backend):
    # The Triton interpreter is slow: skip the extra runs of the dynamic-shape
    # AOT test there; the other utilities (schema, autograd registration,
    # fake tensor) run for every backend.
    utils = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    if backend == "triton" and args[0].device.type == "cpu":
        utils = utils[:3]
    torch.library.opcheck(op, args, test_utils=utils)


@pytest.mark.parametrize("backend,device", backend_params())
def test_opcheck_boxes_and_mask(backend, device):
    lam = torch.rand(6, device=device)
    center = torch.rand(6, 2, device=device)
    _opcheck(_op(backend, "cutmix_boxes"), (lam, center, 9, 7), backend)
    boxes, _ = _op(backend, "cutmix_boxes")(lam, center, 9, 7)
    _opcheck(_op(backend, "cutmix_mask"), (boxes, 9, 7, torch.float16), backend)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("case", OPCHECK_MIX, ids=lambda c: c.name)
def test_opcheck_box_mix(backend, device, case):
    x, boxes, inside, outside, scale = case.make(torch.float32, device)
    _opcheck(_op(backend, "box_mix"), (x.requires_grad_(True), boxes, inside, outside, scale), backend)
    grad_out = torch.randn(x.shape[1:], device=device)
    _opcheck(_op(backend, "box_mix_backward"), (grad_out.requires_grad_(True), boxes, inside, outside, scale), backend)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("case", OPCHECK_UNMIX, ids=lambda c: c.name)
def test_opcheck_unmix(backend, device, case):
    args = case.op_args(torch.float32, device)
    feats = args[0].requires_grad_(True)
    _opcheck(_op(backend, "cutmix_unmix"), args, backend)
    pool_args = case.op_args(torch.float32, device, pool=True)
    _opcheck(_op(backend, "cutmix_unmix_pool"), (pool_args[0].requires_grad_(True),) + pool_args[1:], backend)
    subnets = 2 if args[2] is None else args[2].shape[1]
    grad = torch.randn((subnets,) + tuple(feats.shape), device=device, requires_grad=True)
    _opcheck(_op(backend, "cutmix_unmix_backward"), (grad,) + args[1:], backend)
    grad_pool = torch.randn((subnets,) + tuple(feats.shape[:2]), device=device, requires_grad=True)
    _opcheck(
        _op(backend, "cutmix_unmix_pool_backward"),
        (grad_pool,) + pool_args[1:] + (feats.shape[2], feats.shape[3], False),
        backend,
    )


@pytest.mark.parametrize(
    "backend,device", backend_params() + [pytest.param("reference", "cpu", id="reference-cpu")]
)
def test_compile_fullgraph_forward_backward(backend, device):
    torch._dynamo.reset()
    inside = torch.tensor([[1.0, 0.0]], device=device).expand(4, 2)
    outside = torch.tensor([[0.0, 1.0]], device=device).expand(4, 2)

    def run(x, feat_weight, boxes):
        """A MixShare step's use of the ops: mix, (core), unmix + pool."""
        mixed = mixshare_ops.box_mix(x, boxes, inside, outside, 2.0, backend=backend)
        feats = torch.nn.functional.avg_pool2d(mixed, 2) * feat_weight
        pooled = mixshare_ops.cutmix_unmix_pool(feats, boxes, box_size=(8, 8), ratio=0.5, backend=backend)
        unmixed = mixshare_ops.cutmix_unmix(feats, boxes, box_size=(8, 8), channels=2, backend=backend)
        return pooled.square().sum() + unmixed.sum()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 8, 8, generator=g).to(device)
    weight = torch.randn(1, 3, 1, 1, generator=g).to(device)
    boxes, _, _ = mixshare_ops.sample_cutmix_boxes(4, 8, 8, generator=g)
    boxes = boxes.to(device)
    results = []
    for fn in (run, torch.compile(run, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")):
        xr, wr = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        loss = fn(xr, wr, boxes)
        loss.backward()
        results.append((loss.detach(), xr.grad, wr.grad))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager)


@pytest.mark.parametrize("backend,device", backend_params())
def test_compile_fullgraph_box_sampling(backend, device):
    torch._dynamo.reset()

    def masks(gen_seed_tensor):
        boxes, area, lam = mixshare_ops.sample_cutmix_boxes(5, 8, 8, device=device, backend=backend)
        return mixshare_ops.cutmix_mask(boxes, 8, 8, backend=backend), area

    compiled = torch.compile(masks, fullgraph=True, backend="aot_eager")
    mask, area = compiled(torch.zeros(1))
    assert mask.shape == (5, 1, 8, 8)
    torch.testing.assert_close(mask.mean(dim=(1, 2, 3)), area)
