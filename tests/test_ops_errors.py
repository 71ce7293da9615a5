"""Bad input: a clear exception naming the argument, from Python and from C++."""

import math

import pytest
import torch

import mixshare_ops
from mixshare_ops import _extension

needs_extension = pytest.mark.skipif(not _extension.loaded(), reason="C++ extension not built")
WRAPPER_BACKENDS = [
    "cpu",
    "reference",
    pytest.param("triton", marks=pytest.mark.skipif(
        "triton" not in mixshare_ops.available_backends("cpu"), reason="triton interpreter not active")),
]

B, M, C, H, W = 3, 2, 4, 8, 8


def good():
    x = torch.randn(M, B, C, H, W)
    boxes = torch.tensor([[0, 0, 4, 4], [1, 2, 3, 8], [0, 0, 0, 0]], dtype=torch.int32)
    weights = torch.rand(B, M)
    feats = torch.randn(B, C, 4, 4)
    return x, boxes, weights, feats


def bad_boxes():
    return [
        (torch.tensor([[0, 0, 4, 4]] * B, dtype=torch.int64), "int32"),
        (torch.zeros(B, 3, dtype=torch.int32), r"\[B, 4\]"),
        (torch.zeros(B + 1, 4, dtype=torch.int32), "one row per sample"),
        (torch.tensor([[-1, 0, 4, 4]] * B, dtype=torch.int32), "boxes"),
        (torch.tensor([[0, 0, 9, 4]] * B, dtype=torch.int32), "boxes"),
        (torch.tensor([[0, 0, 4, 9]] * B, dtype=torch.int32), "boxes"),
        (torch.tensor([[5, 0, 4, 4]] * B, dtype=torch.int32), "top <= bottom"),
        (torch.tensor([[0, 5, 4, 4]] * B, dtype=torch.int32), "left <= right"),
    ]


# (description, call(backend), expected exception, message pattern)
def wrapper_cases():
    x, boxes, w, feats = good()
    box_mix, unmix, pool = mixshare_ops.box_mix, mixshare_ops.cutmix_unmix, mixshare_ops.cutmix_unmix_pool
    cases = [
        ("x rank", lambda be: box_mix(x[0], boxes, w, w, backend=be), ValueError, "x must be a 5-D"),
        ("M < 2", lambda be: box_mix(x[:1], boxes, w[:, :1], w[:, :1], backend=be), ValueError, "M >= 2"),
        ("integer x", lambda be: box_mix(x.long(), boxes, w, w, backend=be), TypeError, "x must be a float"),
        ("weights shape", lambda be: box_mix(x, boxes, w[:, :1], w, backend=be), ValueError, "inside_weight must have shape"),
        ("weights batch", lambda be: box_mix(x, boxes, w, w[:2], backend=be), ValueError, "outside_weight must have shape"),
        ("weights dtype", lambda be: box_mix(x, boxes, w.long(), w, backend=be), TypeError, "inside_weight must be a float"),
        ("scale nan", lambda be: box_mix(x, boxes, w, w, math.nan, backend=be), ValueError, "scale must be finite"),
        ("features rank", lambda be: unmix(x, boxes, backend=be), ValueError, "features must be a 4-D"),
        ("integer features", lambda be: unmix(feats.int(), boxes, backend=be), TypeError, "features must be a float"),
        ("ratio > 1", lambda be: unmix(feats, boxes, box_size=(8, 8), ratio=1.5, backend=be), ValueError, "ratio must be in"),
        ("ratio < 0", lambda be: pool(feats, boxes, box_size=(8, 8), ratio=-0.1, backend=be), ValueError, "ratio must be in"),
        ("ratio nan", lambda be: unmix(feats, boxes, box_size=(8, 8), ratio=math.nan, backend=be), ValueError, "ratio must be in"),
        ("channels > C", lambda be: unmix(feats, boxes, box_size=(8, 8), channels=5, backend=be), ValueError, "channels must be in"),
        ("channels < 0", lambda be: pool(feats, boxes, box_size=(8, 8), channels=-1, backend=be), ValueError, "channels must be in"),
        ("box_size small", lambda be: unmix(feats, boxes, box_size=(2, 8), backend=be), ValueError, "box_size must be at least"),
        ("one weight", lambda be: unmix(feats, boxes, w, None, box_size=(8, 8), backend=be), ValueError, "given together"),
        ("unmix M < 2", lambda be: unmix(feats, boxes, w[:, :1], w[:, :1], box_size=(8, 8), backend=be), ValueError, "M >= 2"),
        ("normalize", lambda be: pool(feats, boxes, box_size=(8, 8), normalize="sum", backend=be), ValueError, "normalize must be"),
        ("lam > 1", lambda be: mixshare_ops.cutmix_boxes(torch.full((2,), 1.5), torch.rand(2, 2), 8, 8, backend=be), ValueError, "lam must lie in"),
        ("lam nan", lambda be: mixshare_ops.cutmix_boxes(torch.full((2,), math.nan), torch.rand(2, 2), 8, 8, backend=be), ValueError, "lam must lie in"),
        ("center shape", lambda be: mixshare_ops.cutmix_boxes(torch.rand(2), torch.rand(2, 3), 8, 8, backend=be), ValueError, "center must have shape"),
        ("center range", lambda be: mixshare_ops.cutmix_boxes(torch.rand(2), torch.full((2, 2), 1.0), 8, 8, backend=be), ValueError, "center must lie in"),
        ("height 0", lambda be: mixshare_ops.cutmix_boxes(torch.rand(2), torch.rand(2, 2), 0, 8, backend=be), ValueError, "height must be in \\[1, "),
        ("mask width", lambda be: mixshare_ops.cutmix_mask(boxes, 8, -2, backend=be), ValueError, "width must be in \\[1, "),
        ("backend name", lambda be: box_mix(x, boxes, w, w, backend="cudnn"), ValueError, "unknown backend 'cudnn'"),
    ]
    meta = "meta"
    cases.append(
        ("devices", lambda be: box_mix(x, boxes.to(meta), w, w, backend=be), ValueError, "boxes must be on the same device")
    )
    for i, (bad, pattern) in enumerate(bad_boxes()):
        exc = TypeError if bad.dtype != torch.int32 else ValueError
        cases.append((f"mix boxes {i}", lambda be, bad=bad: box_mix(x, bad, w, w, backend=be), exc, pattern))
        cases.append((f"unmix boxes {i}", lambda be, bad=bad: unmix(feats, bad, box_size=(8, 8), backend=be), exc, pattern))
    return cases


@pytest.mark.parametrize("backend", WRAPPER_BACKENDS)
@pytest.mark.parametrize("case", wrapper_cases(), ids=lambda c: c[0])
def test_python_entry_points_refuse_bad_input(backend, case):
    _, call, exc, pattern = case
    with pytest.raises(exc, match=pattern):
        call(backend)


def test_unknown_backend_in_environment(monkeypatch):
    x, boxes, w, _ = good()
    monkeypatch.setenv("MIXSHARE_OPS_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"MIXSHARE_OPS_BACKEND.*'fast'.*cuda, triton, cpu, reference"):
        mixshare_ops.box_mix(x, boxes, w, w)


def test_backend_not_usable_on_device():
    x, boxes, w, _ = good()
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run on cpu tensors"):
        mixshare_ops.box_mix(x, boxes, w, w, backend="cuda")


# The C++ entry points check their inputs too (TORCH_CHECK_VALUE / _TYPE raise
# ValueError / TypeError, as the Python wrappers do).
def cpp_cases():
    x, boxes, w, feats = good()
    ops = torch.ops.mixshare_ops if _extension.loaded() else None
    if ops is None:
        return []
    cases = [
        ("x rank", lambda: ops.box_mix(x[0], boxes, w, w, 1.0), "x must be a 5-D"),
        ("M < 2", lambda: ops.box_mix(x[:1], boxes, w[:, :1], w[:, :1], 1.0), "M >= 2"),
        ("integer x", lambda: ops.box_mix(x.long(), boxes, w, w, 1.0), "x must be a float16"),
        ("weights shape", lambda: ops.box_mix(x, boxes, w[:, :1], w, 1.0), "inside_weight must have shape"),
        ("boxes dtype", lambda: ops.box_mix(x, boxes.long(), w, w, 1.0), "boxes must be an int32"),
        ("boxes rows", lambda: ops.box_mix(x, boxes[:2], w[:2], w[:2], 1.0), "boxes must have one row per sample"),
        ("features rank", lambda: ops.cutmix_unmix(x, boxes, None, None, 8, 8, 0.0, 4), "features must be a 4-D"),
        ("ratio", lambda: ops.cutmix_unmix(feats, boxes, None, None, 8, 8, 2.0, 4), "ratio must be in"),
        ("ratio nan", lambda: ops.cutmix_unmix(feats, boxes, None, None, 8, 8, math.nan, 4), "ratio must be in"),
        ("channels", lambda: ops.cutmix_unmix(feats, boxes, None, None, 8, 8, 0.0, 9), "channels must be in"),
        ("box_size", lambda: ops.cutmix_unmix(feats, boxes, None, None, 3, 8, 0.0, 4), "box_size must be at least"),
        ("one weight", lambda: ops.cutmix_unmix(feats, boxes, w, None, 8, 8, 0.0, 4), "given together"),
        ("normalize", lambda: ops.cutmix_unmix_pool(feats, boxes, None, None, 8, 8, 0.0, 4, "max"), "normalize must be"),
        ("pool grad rank", lambda: ops.cutmix_unmix_pool_backward(feats, boxes, None, None, 8, 8, 0.0, 4, "mean", 4, 4, False), "grad_out must be a 3-D"),
        ("unmix grad M", lambda: ops.cutmix_unmix_backward(x[:, :, :, :4, :4].contiguous(), boxes, w[:, :1].repeat(1, 3), w.repeat(1, 2)[:, :3], 8, 8, 0.0, 4), "grad_out must have M = 3"),
        ("lam", lambda: ops.cutmix_boxes(torch.full((2,), -0.5), torch.rand(2, 2), 8, 8), "lam must lie in"),
        ("center", lambda: ops.cutmix_boxes(torch.rand(2), torch.rand(3, 2), 8, 8), "center must have shape"),
        ("height", lambda: ops.cutmix_mask(boxes, 0, 8, torch.float32), "height must be in \\[1, "),
    ]
    for i, (bad, pattern) in enumerate(bad_boxes()):
        if bad.shape == (B, 4) and bad.dtype == torch.int32:
            cases.append((f"mix boxes {i}", lambda bad=bad: ops.box_mix(x, bad, w, w, 1.0), pattern))
            cases.append((f"pool boxes {i}", lambda bad=bad: ops.cutmix_unmix_pool(feats, bad, None, None, 8, 8, 0.0, 4, "mean"), pattern))
            cases.append((f"mask boxes {i}", lambda bad=bad: ops.cutmix_mask(bad, 8, 8, torch.float32), pattern))
    return cases


@needs_extension
@pytest.mark.parametrize("case", cpp_cases(), ids=lambda c: c[0])
def test_cpp_entry_points_refuse_bad_input(case):
    _, call, pattern = case
    with pytest.raises((ValueError, TypeError), match=pattern):
        call()


def test_value_checks_toggle_never_skips_cpu_checks():
    """Value checks can be turned off for CUDA inputs (no host sync); CPU
    inputs are always checked, since reading them costs no synchronisation."""
    feats = torch.randn(1, 2, 4, 4)
    wild = torch.tensor([[-3, -3, 100, 2]], dtype=torch.int32)
    with mixshare_ops.value_checks(False):
        assert not mixshare_ops.value_checks_enabled()
        for backend in ("cpu", "reference"):
            with pytest.raises((ValueError, RuntimeError), match="boxes"):
                mixshare_ops.cutmix_unmix(feats, wild, backend=backend)
    assert mixshare_ops.value_checks_enabled()
