"""The conventions of :mod:`mixshare_ops.conventions` (default weights, opmath dtype, normalize
modes) and the one same-device message: each backend's copy (C++, CUDA, the Triton kernels)
behaves as the one definition says."""

import pytest
import torch

import mixshare_ops
from mixshare_ops import _extension, backends, checks, conventions, plan, reference
from tests.cases import UnmixCase, backend_params, dtypes_for

needs_cpp = pytest.mark.skipif(not _extension.loaded(), reason="C++ extension not built")
BACKENDS = backend_params() + [pytest.param("reference", "cpu", id="reference-cpu")]


def test_default_weights_give_the_box_to_subnetwork_0_and_the_rest_to_1():
    inside, outside = conventions.default_weights(3, "cpu", torch.float64)
    assert conventions.DEFAULT_SUBNETS == 2
    assert torch.equal(inside, torch.tensor([[1.0, 0.0]] * 3, dtype=torch.float64))
    assert torch.equal(outside, torch.tensor([[0.0, 1.0]] * 3, dtype=torch.float64))
    assert conventions.num_subnets(None) == 2 and conventions.num_subnets(torch.zeros(3, 5)) == 5


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("op", ["cutmix_unmix", "cutmix_unmix_pool"])
def test_weights_left_out_are_the_default_weights_on_every_backend(backend, device, op):
    """Forward and backward (the backward operators take None weights too) equal a call with
    :func:`conventions.default_weights` passed explicitly, bit for bit."""
    feats, boxes, _, _, kwargs = UnmixCase("d", ratio=0.25, unmixed_channels=3).make(device=device)
    fn = getattr(mixshare_ops, op)
    outputs = []
    for weights in ((None, None), conventions.default_weights(feats.shape[0], device, torch.float32)):
        f = feats.clone().requires_grad_()
        out = fn(f, boxes, *weights, backend=backend, **kwargs)
        (out * torch.arange(out.numel(), device=device).view(out.shape)).sum().backward()
        outputs.append((out.detach(), f.grad))
    assert outputs[0][0].shape[0] == conventions.DEFAULT_SUBNETS
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])


@pytest.mark.parametrize("dtypes, expected", [
    ((torch.float16,), torch.float32), ((torch.bfloat16,), torch.float32), ((torch.float32,), torch.float32),
    ((torch.float64,), torch.float64), ((torch.float32, torch.float64), torch.float64),
    ((torch.float16, torch.bfloat16), torch.float32),
])
def test_opmath_dtype(dtypes, expected):
    assert conventions.opmath_dtype(*dtypes) == expected
    assert reference.opmath_dtype is conventions.opmath_dtype


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_float16_is_computed_in_float32_on_every_backend(backend, device):
    """Sums of 60000s pass float16's largest value (65504) on the way; computed in float32 and
    rounded once, the pooled means are the finite 60000 (0 where a subnetwork's share is empty)."""
    if torch.float16 not in dtypes_for(backend, device):
        pytest.skip(f"{backend} does not take float16")
    feats = torch.full((2, 3, 2, 2), 60000.0, dtype=torch.float16, device=device)
    boxes = torch.tensor([[0, 0, 1, 2], [0, 0, 2, 2]], dtype=torch.int32, device=device)
    pooled = mixshare_ops.cutmix_unmix_pool(feats, boxes, channels=2, normalize="masked", backend=backend)
    expected = torch.full((2, 2, 3), 60000.0)
    expected[1, 1, :2] = 0.0  # sample 1's box is the whole map: subnetwork 1 gets nothing
    assert torch.equal(pooled.float().cpu(), expected)


def test_normalize_modes_are_one_table():
    assert conventions.NORMALIZE_MODES == tuple(conventions.NORMALIZE_MEANINGS) == ("mean", "masked")
    assert checks.NORMALIZE_MODES is conventions.NORMALIZE_MODES
    assert conventions.DEFAULT_NORMALIZE in conventions.NORMALIZE_MODES
    with pytest.raises(ValueError, match="UnmixPlan.normalize must be one of mean, masked"):
        plan.UnmixPlan(0.0, 1, "max")


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_each_normalize_mode_pools_as_its_meaning_says(backend, device):
    """Constant features 3 on a 2 x 4 map. Sample 0's box is the left half: "mean" (divide by
    h * w) gives each subnetwork 3 * 4 / 8, "masked" (divide by its mask's sum) gives 3. Sample 1's
    box is empty: subnetwork 0's mask sums to 0 (both modes give 0), subnetwork 1 owns the map (3)."""
    feats = torch.full((2, 1, 2, 4), 3.0, device=device)
    boxes = torch.tensor([[0, 0, 2, 2], [0, 0, 0, 0]], dtype=torch.int32, device=device)
    expected = {"mean": [[1.5, 0.0], [1.5, 3.0]], "masked": [[3.0, 0.0], [3.0, 3.0]]}
    for mode, values in expected.items():
        pooled = mixshare_ops.cutmix_unmix_pool(feats, boxes, normalize=mode, backend=backend)
        assert torch.equal(pooled[:, :, 0].cpu(), torch.tensor(values)), mode
    default = mixshare_ops.cutmix_unmix_pool(feats, boxes, backend=backend)
    assert torch.equal(default[:, :, 0].cpu(), torch.tensor(expected[conventions.DEFAULT_NORMALIZE]))


def test_the_ops_and_the_training_config_default_to_different_modes_on_purpose():
    from mixshare import config as cfg

    assert conventions.DEFAULT_NORMALIZE == "masked"
    assert cfg.Config().unmix_normalize == "mean"
    help_text = cfg.FIELDS["unmix_normalize"].metadata["help"]
    assert all(mode in help_text for mode in conventions.NORMALIZE_MODES)


@needs_cpp
def test_cpp_messages_are_the_python_ones():
    """The C++ copies of the normalize and default-weight rules refuse with checks.py's messages."""
    feats, boxes = torch.randn(2, 3, 4, 4), torch.zeros(2, 4, dtype=torch.int32)
    ops = torch.ops.mixshare_ops
    calls = [
        (lambda: ops.cutmix_unmix_pool(feats, boxes, None, None, 4, 4, 0.0, 3, "max"),
         lambda: checks.check_normalize("max")),
        (lambda: ops.cutmix_unmix(feats, boxes, torch.rand(2, 2), None, 4, 4, 0.0, 3),
         lambda: checks.check_unmix_weights(torch.rand(2, 2), None, feats, "features", 2)),
    ]
    for cpp, python in calls:
        with pytest.raises(ValueError) as cpp_error:
            cpp()
        with pytest.raises(ValueError) as python_error:
            python()
        assert str(cpp_error.value) == str(python_error.value)


# (id, backend, kind, device of x, device of boxes): box_mix through each backend's public function
# ("public") or its operator ("raw", the compiled family for cpu and cuda)
MISMATCHES = [
    (f"{kind}-{backend}-{device}-{other}", backend, kind, device, other)
    for kind, backend, device, other in [
        ("public", "cpu", "cpu", "meta"), ("public", "triton", "cpu", "meta"), ("public", "reference", "cpu", "meta"),
        ("raw", "cpu", "cpu", "meta"), ("raw", "triton", "cpu", "meta"),
        ("public", "cuda", "cuda", "cpu"), ("public", "triton", "cuda", "cpu"), ("raw", "cuda", "cuda", "cpu"),
        ("raw", "triton", "cuda", "cpu"),
    ]
]


@pytest.mark.parametrize("case", MISMATCHES, ids=lambda c: c[0])
def test_one_same_device_message_on_every_route(case):
    """boxes on another device than x: the one message of checks.check_same_device, whether the
    public wrapper, the fake kernel (meta) or the operator (C++ on CUDA, Triton) finds it."""
    _, backend, kind, device, other = case
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if backend != "reference" and backend not in mixshare_ops.available_backends(device):
        pytest.skip(f"backend {backend} is not usable on {device} here")
    x = torch.randn(2, 3, 1, 4, 4, device=device)
    w = torch.rand(3, 2, device=device)
    boxes = torch.zeros(3, 4, dtype=torch.int32, device=other)
    with pytest.raises(ValueError) as error:
        if kind == "public":
            mixshare_ops.box_mix(x, boxes, w, w, backend=backend)
        else:
            backends.op(backend, "box_mix")(x, boxes, w, w, 1.0)
    assert str(error.value) == f"boxes must be on the same device as x ({x.device}), got {boxes.device}"
