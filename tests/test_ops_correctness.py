"""Every backend against the reference: forward and backward, each dtype."""

import math
from fractions import Fraction

import pytest
import torch

import mixshare_ops
from mixshare_ops import _layout, reference
from tests.cases import MIX_CASES, UNMIX_CASES, MixCase, UnmixCase, assert_close, backend_params, dtypes_for, make_boxes

BACKENDS = backend_params()


def _dtypes(backend, device):
    return [pytest.param(d, id=str(d).replace("torch.", "")) for d in dtypes_for(backend, device)]


def _grad(out, inp, seed=1):
    g = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    (grad_in,) = torch.autograd.grad(out, inp, grad_out)
    return grad_in


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_cutmix_boxes_bitwise(backend, device):
    g = torch.Generator().manual_seed(0)
    lam = torch.rand(257, generator=g)
    lam[:4] = torch.tensor([0.0, 1.0, 0.25, 0.5])  # exact edges and perfect squares
    center = torch.rand(257, 2, generator=g)
    for height, width in ((32, 32), (7, 5), (1, 9)):
        for dtype in (torch.float32, torch.float64):
            l, c = lam.to(device, dtype), center.to(device, dtype)
            boxes, area = mixshare_ops.cutmix_boxes(l, c, height, width, backend=backend)
            ref_boxes, ref_area = reference.cutmix_boxes(l.cpu(), c.cpu(), height, width)
            assert boxes.dtype == torch.int32 and area.dtype == dtype
            torch.testing.assert_close(boxes.cpu(), ref_boxes, rtol=0, atol=0)
            torch.testing.assert_close(area.cpu(), ref_area, rtol=0, atol=0)


# Square and non-square grids whose cut boundaries lam = (k / size)^2 the next
# test probes.
BOUNDARY_GRIDS = [(s, s) for s in (1, 2, 3, 7, 8, 13, 16, 31, 32, 33, 64, 100)] + [(7, 13), (32, 5), (1, 33), (100, 64)]


def _boundary_lams(sizes, dtype):
    """Every lam = (k / size)^2, k = 0..size, computed in float64 and rounded
    to ``dtype``, with its two neighbours in ``dtype``, clamped into [0, 1]."""
    exact = torch.tensor(sorted({(k / size) ** 2 for size in sizes for k in range(size + 1)}), dtype=torch.float64)
    lam = exact.to(dtype)
    lam = torch.cat([lam, torch.nextafter(lam, lam.new_tensor(-1.0)), torch.nextafter(lam, lam.new_tensor(2.0))])
    return lam.clamp(0, 1).unique()


def _official_boxes(lam, height, width):
    """[top, left, bottom, right] rows for centre (0.5, 0.5) by the official
    MixMo rule in Python float64: cut = int(size * sqrt(lam))."""
    def clip(v, size):
        return min(max(v, 0), size)

    rows = []
    cy, cx = math.floor(0.5 * height), math.floor(0.5 * width)
    for value in lam.tolist():  # exact: every float16 / bfloat16 / float32 is a float64
        cut_h = int(height * math.sqrt(value))
        cut_w = int(width * math.sqrt(value))
        rows.append([clip(cy - cut_h // 2, height), clip(cx - cut_w // 2, width),
                     clip(cy + cut_h // 2, height), clip(cx + cut_w // 2, width)])
    return torch.tensor(rows, dtype=torch.int32)


@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference-cpu"), *BACKENDS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_cutmix_boxes_cut_size_is_float64_rule(backend, device, dtype):
    """The cut size is int(size * sqrt(lam)) in float64 (the official MixMo
    code's numpy rule) for every lam of the input dtype, in particular at the
    boundaries lam = (k / size)^2 where float32 arithmetic can round across an
    integer; centre 0.5 keeps every box unclipped."""
    for height, width in BOUNDARY_GRIDS:
        lam = _boundary_lams({height, width}, dtype)
        expected = _official_boxes(lam, height, width)
        # Exact float64 check of the expectation itself: an unclipped box spans 2 * (cut // 2).
        cut_h = torch.tensor([int(height * math.sqrt(v)) for v in lam.tolist()])
        assert torch.equal((expected[:, 2] - expected[:, 0]).long(), 2 * (cut_h // 2))
        center_dtypes = (dtype, torch.float64) if dtype != torch.float64 else (dtype,)  # float64 centre: float64 opmath
        for center_dtype in center_dtypes:
            center = torch.full((lam.numel(), 2), 0.5, dtype=center_dtype)
            boxes, area = mixshare_ops.cutmix_boxes(lam.to(device), center.to(device), height, width, backend=backend)
            assert boxes.dtype == torch.int32 and area.dtype == dtype
            wrong = (boxes.cpu() != expected).any(dim=1)
            assert not wrong.any(), (
                f"{int(wrong.sum())} of {lam.numel()} boxes differ from the float64 rule on {height}x{width} "
                f"(center {center_dtype}), e.g. lam={lam[wrong][:4].tolist()}: "
                f"got {boxes.cpu()[wrong][:4].tolist()}, expected {expected[wrong][:4].tolist()}"
            )


def _misrounded_sqrt(x):
    """A faithful but never correctly rounded float64 root (what some CPUs'
    ``torch.sqrt`` gives at some inputs): where sqrt(x) is not a float64, the
    float64 on the other side of it from the correctly rounded ``math.sqrt``.
    Sides are decided in exact rational arithmetic."""
    out = []
    for value in x.tolist():
        root = math.sqrt(value)
        square, exact = Fraction(root) ** 2, Fraction(value)
        if square > exact:
            root = math.nextafter(root, 0.0)
        elif square < exact:
            root = math.nextafter(root, math.inf)
        out.append(root)
    return torch.tensor(out, dtype=torch.float64)


def _sqrt_probe_values():
    """float64 values in [0, 1] where a misrounded root changes boxes: every
    (k / size)^2 of the boundary grids and its neighbours, 4^-j and its
    neighbours, random values at several scales, subnormals, 0 and 1."""
    g = torch.Generator().manual_seed(0)
    powers = torch.tensor([4.0**-j for j in range(0, 30)], dtype=torch.float64)
    near = torch.cat([powers, torch.nextafter(powers, powers.new_tensor(0.0)), torch.nextafter(powers, powers.new_tensor(2.0))])
    scales = torch.tensor([1.0, 1e-3, 1e-30, 1e-200, 1e-310], dtype=torch.float64)
    random = (torch.rand(5, 400, generator=g, dtype=torch.float64) * scales[:, None]).flatten()
    edges = torch.tensor([0.0, 5e-324, 2.0**-800, math.nextafter(2.0**-800, 0.0), 1.0], dtype=torch.float64)
    lams = _boundary_lams({size for grid in BOUNDARY_GRIDS for size in grid}, torch.float64)
    return torch.cat([lams, near.clamp(0, 1), random, edges]).unique()


def test_reference_root_does_not_trust_torch_sqrt(monkeypatch):
    """The reference's float64 root is correctly rounded even where
    ``torch.sqrt`` rounds the wrong way at every inexact value, and so are its
    boxes, at the issue's values lam = 0.25 - 2^-54 and 1 - 2^-53 in
    particular."""
    x = _sqrt_probe_values()
    expected = torch.tensor([math.sqrt(v) for v in x.tolist()], dtype=torch.float64)
    misrounded = _misrounded_sqrt(x)
    assert (misrounded != expected).sum() > x.numel() // 2  # the simulation does misround
    assert ((misrounded - expected).abs() <= torch.nextafter(expected, expected.new_tensor(2.0)) - expected).all()
    torch.testing.assert_close(reference.sqrt_rn(x), expected, rtol=0, atol=0)  # the platform's torch.sqrt
    monkeypatch.setattr(torch, "sqrt", _misrounded_sqrt)
    torch.testing.assert_close(reference.sqrt_rn(x), expected, rtol=0, atol=0)
    for height, width in BOUNDARY_GRIDS:
        lam = _boundary_lams({height, width}, torch.float64)
        boxes, _ = reference.cutmix_boxes(lam, torch.full((lam.numel(), 2), 0.5, dtype=torch.float64), height, width)
        torch.testing.assert_close(boxes, _official_boxes(lam, height, width), rtol=0, atol=0)
    lam = torch.tensor([0.24999999999999997, 0.9999999999999999], dtype=torch.float64)
    boxes, area = reference.cutmix_boxes(lam, torch.full((2, 2), 0.5, dtype=torch.float64), 2, 2)
    assert boxes.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]] and area.tolist() == [0.0, 0.0]  # cut 0: 2 * 0.49999999999999994 < 1


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_sample_cutmix_boxes_same_on_every_backend(backend, device):
    gen = torch.Generator(device=device).manual_seed(123)
    boxes, area, lam = mixshare_ops.sample_cutmix_boxes(64, 32, 32, generator=gen, device=device, backend=backend)
    gen.manual_seed(123)
    ref_boxes, ref_area, ref_lam = mixshare_ops.sample_cutmix_boxes(
        64, 32, 32, generator=gen, device=device, backend="reference"
    )
    torch.testing.assert_close(lam, ref_lam, rtol=0, atol=0)
    torch.testing.assert_close(boxes, ref_boxes, rtol=0, atol=0)
    torch.testing.assert_close(area, ref_area, rtol=0, atol=0)
    assert boxes.device.type == device and ((lam > 0) & (lam < 1)).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bool, torch.int64], ids=str)
def test_cutmix_mask(backend, device, dtype):
    g = torch.Generator().manual_seed(0)
    boxes = make_boxes(5, 6, 9, "mixed", g).to(device)
    mask = mixshare_ops.cutmix_mask(boxes, 6, 9, dtype, backend=backend)
    assert mask.shape == (5, 1, 6, 9) and mask.dtype == dtype
    torch.testing.assert_close(mask.cpu(), reference.cutmix_mask(boxes.cpu(), 6, 9, dtype), rtol=0, atol=0)
    assert mixshare_ops.cutmix_mask(boxes[:0], 6, 9, backend=backend).shape == (0, 1, 6, 9)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("case", MIX_CASES, ids=lambda c: c.name)
def test_box_mix(backend, device, case):
    for dtype in dtypes_for(backend, device):
        x, boxes, inside, outside, scale = case.make(dtype, device)
        x.requires_grad_(True)
        out = mixshare_ops.box_mix(x, boxes, inside, outside, scale, backend=backend)
        x_ref = x.detach().cpu().requires_grad_(True)
        ref = reference.box_mix(x_ref, boxes.cpu(), inside.cpu(), outside.cpu(), scale)
        assert out.shape == ref.shape and out.dtype == dtype
        assert_close(out.cpu(), ref)
        # Output in the input's slice layout.
        expect_layout = _layout.stacked_layout(x)[1]
        assert _layout.feature_layout(out)[1] == expect_layout or out.numel() == 0 or out.shape[1] == 1
        if x.numel() > 0:
            assert_close(_grad(out, x).cpu(), _grad(ref, x_ref), dtype)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_cutmix_mix_matches_mixmo_formula(backend, device):
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(2, 4, 3, 8, 8, generator=g).to(device).unbind(0)
    boxes = make_boxes(4, 8, 8, "mixed", g).to(device)
    mask = reference.cutmix_mask(boxes, 8, 8).to(device)
    out = mixshare_ops.cutmix_mix(x0, x1, boxes, backend=backend)
    torch.testing.assert_close(out, 2 * (mask * x0 + (1 - mask) * x1))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("case", UNMIX_CASES, ids=lambda c: c.name)
def test_cutmix_unmix(backend, device, case):
    for dtype in dtypes_for(backend, device):
        feats, boxes, inside, outside, kw = case.make(dtype, device)
        feats.requires_grad_(True)
        out = mixshare_ops.cutmix_unmix(feats, boxes, inside, outside, backend=backend, **kw)
        f_ref = feats.detach().cpu().requires_grad_(True)
        cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
        ref = reference.cutmix_unmix(f_ref, boxes.cpu(), cpu(inside), cpu(outside), **kw)
        assert out.shape == ref.shape and out.dtype == dtype
        assert_close(out.cpu(), ref)
        if out.numel() > 0:
            assert _layout.stacked_layout(out)[1] == _layout.feature_layout(feats)[1] or case.channels == 1
            assert_close(_grad(out, feats).cpu(), _grad(ref, f_ref), dtype)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("case", UNMIX_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("normalize", ["masked", "mean"])
def test_cutmix_unmix_pool(backend, device, case, normalize):
    for dtype in dtypes_for(backend, device):
        feats, boxes, inside, outside, kw = case.make(dtype, device)
        feats.requires_grad_(True)
        out = mixshare_ops.cutmix_unmix_pool(feats, boxes, inside, outside, normalize=normalize, backend=backend, **kw)
        f_ref = feats.detach().cpu().requires_grad_(True)
        cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
        ref = reference.cutmix_unmix_pool(f_ref, boxes.cpu(), cpu(inside), cpu(outside), normalize=normalize, **kw)
        assert out.shape == ref.shape and out.dtype == dtype
        assert torch.isfinite(out.float()).all()
        assert_close(out.cpu(), ref)
        if out.numel() > 0:
            grad = _grad(out, feats)
            assert_close(grad.cpu(), _grad(ref, f_ref), dtype)
            # The gradient comes back in the features' memory layout.
            assert _layout.feature_layout(grad)[1] == _layout.feature_layout(feats)[1] or case.channels == 1


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_unmix_pool_equals_pooled_unmix(backend, device):
    """The fused op is unmixing followed by (masked) pooling."""
    case = UNMIX_CASES[2]
    feats, boxes, inside, outside, kw = case.make(torch.float64 if backend != "cuda" else torch.float32, device)
    unmixed = mixshare_ops.cutmix_unmix(feats, boxes, inside, outside, backend=backend, **kw)
    pooled = mixshare_ops.cutmix_unmix_pool(feats, boxes, inside, outside, normalize="mean", backend=backend, **kw)
    torch.testing.assert_close(pooled, unmixed.mean(dim=(3, 4)))


def test_reference_unmix_is_mixshare_fadeout_rule():
    """Hand-computed: default weights, box grid = feature grid, ratio r."""
    feats = torch.ones(1, 1, 2, 2)
    boxes = torch.tensor([[0, 0, 1, 2]], dtype=torch.int32)  # the top row
    out = reference.cutmix_unmix(feats, boxes, ratio=0.25)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([[1.0, 1.0], [0.25, 0.25]]))
    torch.testing.assert_close(out[1, 0, 0], torch.tensor([[0.25, 0.25], [1.0, 1.0]]))
    # Downsampling a 4x4 box grid to 2x2: a 1x2 box covers half of cell (0, 0).
    boxes = torch.tensor([[0, 0, 1, 2]], dtype=torch.int32)
    out = reference.cutmix_unmix(feats, boxes, box_size=(4, 4))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([[0.5, 0.0], [0.0, 0.0]]))
    pooled = reference.cutmix_unmix_pool(feats * 3, boxes, box_size=(4, 4))
    torch.testing.assert_close(pooled[:, 0, 0], torch.tensor([3.0, 3.0]))  # masked mean of a constant


# The C++ CPU kernels go through planes in 256-element chunks when M > 2 or
# the dtype is float16/bfloat16; the shared cases' planes are smaller than that.
LARGE_PLANE_MIX_CASES = [
    MixCase("large_planes_m3", subnets=3, batch=2, channels=2, height=17, width=19),
    MixCase("large_planes_m3_channels_last", subnets=3, batch=2, channels=2, height=17, width=19, channels_last=True),
]
LARGE_PLANE_UNMIX_CASES = [
    UnmixCase("large_planes", batch=2, channels=2, height=17, width=19, box_size=(34, 38), ratio=0.3),
    UnmixCase(
        "large_planes_m3", batch=2, channels=3, height=17, width=19, box_size=(34, 38), subnets=3, ratio=0.3,
        unmixed_channels=2,
    ),
    UnmixCase(
        "large_planes_m3_channels_last", batch=2, channels=3, height=17, width=19, box_size=(34, 38), subnets=3,
        unmixed_channels=2, channels_last=True,
    ),
]
CPU_ONLY = pytest.mark.skipif("cpu" not in mixshare_ops.available_backends("cpu"), reason="C++ extension not built")


@CPU_ONLY
@pytest.mark.parametrize("case", LARGE_PLANE_MIX_CASES, ids=lambda c: c.name)
def test_cpu_box_mix_large_planes(case):
    test_box_mix("cpu", "cpu", case)


@CPU_ONLY
@pytest.mark.parametrize("case", LARGE_PLANE_UNMIX_CASES, ids=lambda c: c.name)
def test_cpu_unmix_large_planes(case):
    test_cutmix_unmix("cpu", "cpu", case)
    for normalize in ("masked", "mean"):
        test_cutmix_unmix_pool("cpu", "cpu", case, normalize)
