"""Triton index widths, grid limits and autotuning.

Slices of 2**31 elements do not fit a CPU test, so the int64 path of every
kernel is forced by lowering ``_common.INT32_LIMIT``: the same kernels then
index in int64 on small inputs and must still match the reference (and each
kernel's ``tl.static_assert`` checks that its offsets really are int64). The
grid limit is lowered the same way (``_common.GRID_LIMIT``). Overflows that
small inputs can reach (window cell counts, box arithmetic) run for real: the
interpreter wraps int32 like a GPU. The compiler's front end runs without a
GPU too, in a subprocess without the interpreter (``python -m
tests.test_triton_limits``), since the interpreter accepts code the compiler
rejects.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mixshare_ops
from mixshare_ops import reference
from tests.cases import MIX_CASES, UNMIX_CASES, assert_close

pytestmark = pytest.mark.skipif("triton" not in mixshare_ops.available_backends("cpu" if not torch.cuda.is_available()
                                                                                 else "cuda"),
                                reason="Triton not usable here")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = Path(__file__).resolve().parents[1]
# Both layouts, M = 2 and 3.
MIX = [c for c in MIX_CASES if c.name in ("m2", "m3_odd", "channels_last", "transposed_channels_last")]
UNMIX = [c for c in UNMIX_CASES if c.name in ("not_divisible", "m3_partial", "channels_last", "channels_last_m3")]
KERNELS = ["cutmix_boxes_kernel", "cutmix_mask_kernel", "box_mix_kernel", "box_mix_backward_kernel",
           "cutmix_unmix_kernel", "cutmix_unmix_backward_kernel", "unmix_masks_kernel", "cutmix_unmix_pool_kernel",
           "cutmix_unmix_pool_backward_kernel"]


def _op_modules():
    """The Triton op modules (kernels, launchers, op definitions)."""
    from mixshare_ops.triton import box_mix, boxes, cutmix_unmix, cutmix_unmix_pool

    return [boxes, box_mix, cutmix_unmix, cutmix_unmix_pool]


def _kernel_module(name):
    """The op module that defines (and launches) kernel ``name``."""
    (module,) = [m for m in _op_modules() if hasattr(m, name)]
    return module


def _kernel(name):
    return getattr(_kernel_module(name), name)


@pytest.fixture
def common():
    from mixshare_ops.triton import _common

    return _common


def _untuned(kernel):
    """The JIT function of a kernel (inside its Autotuner on GPUs)."""
    from triton.runtime.autotuner import Autotuner

    return kernel.fn if isinstance(kernel, Autotuner) else kernel


class _Spy:
    """Records the INT64 flag of each launch of one kernel (heuristic tiles on GPUs)."""

    def __init__(self, name, kernel, log):
        self.name, self.kernel, self.log = name, _untuned(kernel), log

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.log.append((self.name, kwargs.get("INT64")))
            return self.kernel[grid](*args, **kwargs)

        return run


@pytest.fixture(params=[False, True], ids=["int32", "int64"])
def index_width(request, common, monkeypatch):
    """Runs the test with the default limit, then with every in-sample value in
    int64; checks afterwards that every launch got that index width."""
    if request.param:
        monkeypatch.setattr(common, "INT32_LIMIT", 1)
    log = []
    for name in KERNELS:
        module = _kernel_module(name)
        monkeypatch.setattr(module, name, _Spy(name, getattr(module, name), log))
    yield request.param
    assert log, "no kernel launched"
    assert all(flag is request.param for name, flag in log if name != "cutmix_boxes_kernel"), log


def _grad(out, inp):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out)
    (grad,) = torch.autograd.grad(out, inp, g)
    return grad


def _cpu(t):
    return None if t is None else t.cpu()


# ---------------------------------------------------------------------------
# Both index widths against the reference: every op, forward and backward
# ---------------------------------------------------------------------------


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
    ref = spec(f_ref, boxes.cpu(), _cpu(inside), _cpu(outside), **kw)
    assert_close(out.cpu(), ref)
    assert_close(_grad(out, feats).cpu(), _grad(ref, f_ref))


def test_mask_and_boxes_either_index_width(index_width):
    boxes = torch.tensor([[0, 0, 5, 7], [1, 2, 4, 3], [2, 2, 2, 2]], dtype=torch.int32, device=DEVICE)
    mask = mixshare_ops.cutmix_mask(boxes, 5, 7, torch.float32, backend="triton")
    assert torch.equal(mask.cpu(), reference.cutmix_mask(boxes.cpu(), 5, 7, torch.float32))
    lam = torch.tensor([0.0, 0.3, 1.0], device=DEVICE)
    center = torch.tensor([[0.1, 0.9], [0.5, 0.5], [0.99, 0.0]], device=DEVICE)
    sampled, area = mixshare_ops.cutmix_boxes(lam, center, 5, 7, backend="triton")
    ref_boxes, ref_area = reference.cutmix_boxes(lam.cpu(), center.cpu(), 5, 7)
    assert torch.equal(sampled.cpu(), ref_boxes) and torch.equal(area.cpu(), ref_area)


# ---------------------------------------------------------------------------
# Overflows small inputs reach
# ---------------------------------------------------------------------------


def test_window_cell_counts_past_int32():
    """A 1 x 1 feature map under a 65,536 x 65,536 box grid: the cell count
    (y1 - y0) * (x1 - x0) is 2**32 (0 in int32), so the window math is int64."""
    size = 2**16
    boxes = torch.tensor([[0, 0, 40000, 50000], [100, 7, 65536, 65535], [5, 5, 5, 9]], dtype=torch.int32)
    area = ((boxes[:, 2] - boxes[:, 0]).double() * (boxes[:, 3] - boxes[:, 1]).double())
    frac = area / float(size * size)
    ratio = 0.25
    masks = torch.stack([frac, 1 - frac])  # default weights: subnetwork 0 inside the box
    masks = masks + ratio * (1 - masks)  # [M, B]
    feats = torch.randn((3, 2, 1, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = mixshare_ops.cutmix_unmix(feats.float().to(DEVICE), boxes.to(DEVICE), box_size=(size, size), ratio=ratio,
                                    backend="triton")
    assert_close(out.cpu(), (feats[None] * masks[:, :, None, None, None]).float())
    pooled = mixshare_ops.cutmix_unmix_pool(feats.float().to(DEVICE), boxes.to(DEVICE), box_size=(size, size),
                                            ratio=ratio, normalize="mean", backend="triton")
    assert_close(pooled.cpu(), (feats[None, :, :, 0, 0] * masks[:, :, None]).float())


def test_box_arithmetic_past_int32():
    """cy + cut_h // 2 passes 2**31 on a 2e9-row grid (the kernel computes in int64, as box_math.h does)."""
    lam = torch.tensor([1.0, 0.81, 0.25, 0.0])
    center = torch.tensor([[0.9, 0.5], [0.99, 0.0], [0.5, 0.9], [0.7, 0.3]])
    height, width = 2_000_000_000, 3
    boxes, area = mixshare_ops.cutmix_boxes(lam.to(DEVICE), center.to(DEVICE), height, width, backend="triton")
    ref_boxes, ref_area = reference.cutmix_boxes(lam, center, height, width)
    assert torch.equal(boxes.cpu(), ref_boxes)
    assert torch.equal(area.cpu(), ref_area)


def test_int64_is_chosen_from_the_sizes(common):
    # In-sample offsets: one [1, 46341, 46341] slice has more than 2**31 elements.
    assert common._int64(common._slice_bound(1, 46341 * 46341))
    assert common._int64(common._slice_bound(2**16, 2**15))
    assert not common._int64(common._slice_bound(2048, 2**19))  # 2**30 elements
    # Pixel indices of a tile's padding lanes pass 2**31 before the offsets do.
    assert common._int64(common._slice_bound(1, 2**31 - 100))
    # Window products (y + 1) * box_h on a 2**16 grid from 2**16 boxes, and cell counts.
    assert common._int64(common._window_bound(2**16, 8, 2**16, 8))
    assert common._int64(common._window_bound(1, 1, 2**16, 2**16))
    assert not common._int64(common._window_bound(8, 8, 224, 224))
    assert not common._int64(common._window_bound(1, 1, 32768, 32768))


# ---------------------------------------------------------------------------
# Grid limits: refused with a ValueError before anything is allocated
# ---------------------------------------------------------------------------


class _NoAllocation:
    """The launchers' view of torch, without the allocating functions."""

    def __getattr__(self, name):
        if name in ("empty", "zeros", "full", "empty_like", "zeros_like"):
            return _refuse
        return getattr(torch, name)


def _refuse(*args, **kwargs):
    raise AssertionError("allocated or copied before the size check")


OPS = ["box_mix", "box_mix_backward", "cutmix_unmix", "cutmix_unmix_backward", "cutmix_unmix_pool",
       "cutmix_unmix_pool_backward", "cutmix_mask", "cutmix_boxes"]


def _op_calls():
    """(name, call, argument named in the error) of every Triton op on B = 3 samples (600 for cutmix_boxes)."""
    (mix,) = [c for c in MIX if c.name == "m2"]  # [2, 3, 4, 6, 5]
    (unmix,) = [c for c in UNMIX if c.name == "not_divisible"]  # [3, 4, 3, 5], box grid 7 x 11, M = 2
    x, boxes, inside, outside, scale = mix.make(torch.float32, DEVICE)
    feats, fboxes, _, _, _ = unmix.make(torch.float32, DEVICE)
    subnets, batch, channels, h, w = 2, feats.shape[0], feats.shape[1], feats.shape[2], feats.shape[3]
    w_in, w_out = inside, outside
    ops = torch.ops.mixshare_ops
    lam, center = torch.rand(600, device=DEVICE), torch.rand(600, 2, device=DEVICE)
    return [
        ("box_mix", lambda: ops.triton_box_mix(x, boxes, inside, outside, scale), "x"),
        ("box_mix_backward", lambda: ops.triton_box_mix_backward(x[0], boxes, inside, outside, scale), "grad_out"),
        ("cutmix_unmix", lambda: ops.triton_cutmix_unmix(feats, fboxes, w_in, w_out, 7, 11, 0.0, channels),
         "features"),
        ("cutmix_unmix_backward", lambda: ops.triton_cutmix_unmix_backward(
            feats.expand(subnets, -1, -1, -1, -1), fboxes, w_in, w_out, 7, 11, 0.0, channels), "grad_out"),
        ("cutmix_unmix_pool", lambda: ops.triton_cutmix_unmix_pool(feats, fboxes, w_in, w_out, 7, 11, 0.0, channels,
                                                                   "masked"), "features"),
        ("cutmix_unmix_pool_backward", lambda: ops.triton_cutmix_unmix_pool_backward(
            torch.zeros(subnets, batch, channels, device=DEVICE), fboxes, w_in, w_out, 7, 11, 0.0, channels,
            "masked", h, w, False), "grad_out"),
        ("cutmix_mask", lambda: ops.triton_cutmix_mask(boxes, 6, 5, torch.float32), "boxes"),
        ("cutmix_boxes", lambda: ops.triton_cutmix_boxes(lam, center, 6, 5), "lam"),
    ]


@pytest.mark.parametrize("op", OPS)
def test_grid_limit_is_refused_before_allocating(op, common, monkeypatch):
    ((name, call, arg),) = [c for c in _op_calls() if c[0] == op]
    call()  # fits the default limit
    monkeypatch.setattr(common, "GRID_LIMIT", 2)
    for module in _op_modules():
        for attr in ("empty_features", "empty_stacked", "stacked_layout", "feature_layout"):
            if hasattr(module, attr):
                monkeypatch.setattr(module, attr, _refuse)
    for module in [common] + _op_modules():
        monkeypatch.setattr(module, "torch", _NoAllocation())
    with pytest.raises(ValueError, match=rf"^{name} \(Triton backend\): {arg} with B = \d+.*GRID_LIMIT = 2\b"):
        call()


@pytest.mark.parametrize("channels,hw", [(1, 1), (3, 35), (64, 1024), (640, 49), (2048, 7), (5, 100003)])
def test_grid_bounds_cover_every_tile(channels, hw, common, monkeypatch):
    """The bounds the launchers check hold for every tile a launch may get, tuned at any batch size."""
    monkeypatch.setattr(common, "GRID_LIMIT", 0)  # no shortcut: the bound over the tiles
    monkeypatch.setattr(common, "AUTOTUNE", True)  # every candidate
    for subnets in (2, 3):
        mb = common.next_pow2(subnets)
        for batch in (1, 7, 300):
            bound = common._elementwise_grid_bound(batch, channels, hw, subnets)
            pool_bound = common._pool_grid_bound(batch, channels, hw, subnets)
            assert batch <= min(bound, pool_bound)  # unmix_masks_kernel: one program per sample
            for tuned_at in (1, 7, 300, 10**5):
                for channels_last in (False, True):
                    for tile, warps in common.ELEMENTWISE_TUNING:
                        meta = common.elementwise_meta(tuned_at, channels, hw, channels_last, mb, tile, warps)
                        assert common.elementwise_programs(batch, channels, hw, meta) <= bound
                    for tile, warps in common.POOL_TUNING:
                        meta = common.pool_meta(tuned_at, channels, hw, channels_last, mb, tile, warps)
                        assert batch * common.cdiv(channels, meta["CB"]) <= pool_bound


# ---------------------------------------------------------------------------
# Autotuning: the key leaves out the batch size
# ---------------------------------------------------------------------------


TUNED = ["box_mix_kernel", "box_mix_backward_kernel", "cutmix_unmix_kernel", "cutmix_unmix_backward_kernel",
         "cutmix_unmix_pool_kernel", "cutmix_unmix_pool_backward_kernel"]


def test_autotune_key_leaves_out_the_batch(common):
    """A new batch size (a last partial batch, an evaluation batch) must not re-tune and synchronise."""
    assert "B" not in common.AUTOTUNE_KEY and "B" in common.UNSPECIALIZED
    for name in TUNED:
        kernel = _kernel(name)
        arg_names = kernel.arg_names  # an Autotuner on GPUs, the JIT function here
        assert set(common.AUTOTUNE_KEY) <= set(arg_names), (name, arg_names)
        assert "B" in arg_names
        if hasattr(kernel, "keys"):  # on GPUs: the autotuner really uses that key
            assert list(kernel.keys) == common.AUTOTUNE_KEY
        if hasattr(_untuned(kernel), "do_not_specialize"):  # compiled kernels: B is not specialised on
            assert "B" in _untuned(kernel).do_not_specialize, name


@pytest.mark.parametrize("pool", [False, True], ids=["box_mix", "cutmix_unmix_pool"])
def test_new_batch_size_does_not_benchmark_again(pool, common, monkeypatch):
    """The real triton autotuner around a kernel (timings faked, so no GPU is
    needed): the first call of a feature size benchmarks the pruned tiles, a
    new batch size reuses them (and stays correct), a new feature size tunes again."""
    name, meta_fn, tuning = (("cutmix_unmix_pool_kernel", common.pool_meta, common.POOL_TUNING) if pool
                             else ("box_mix_kernel", common.elementwise_meta, common.ELEMENTWISE_TUNING))
    module = _kernel_module(name)
    tuner = common.autotuner(_untuned(getattr(module, name)), meta_fn, tuning)
    benchmarked = []

    def fake_bench(*args, config, **kwargs):
        benchmarked.append(config)
        return [float(len(benchmarked))] * 3

    monkeypatch.setattr(tuner, "_bench", fake_bench)
    monkeypatch.setattr(module, name, tuner)
    monkeypatch.setattr(common, "AUTOTUNE", True)

    def run(batch, channels):
        g = torch.Generator().manual_seed(batch)
        boxes = torch.tensor([[1, 2, 5, 4]] * batch, dtype=torch.int32, device=DEVICE)
        w_in, w_out = (torch.rand(batch, 2, generator=g).to(DEVICE) for _ in range(2))
        if pool:
            f = torch.randn(batch, channels, 3, 5, generator=g).to(DEVICE)
            out = mixshare_ops.cutmix_unmix_pool(f, boxes, w_in, w_out, box_size=(7, 11), backend="triton")
            ref = reference.cutmix_unmix_pool(f.cpu(), boxes.cpu(), w_in.cpu(), w_out.cpu(), box_size=(7, 11))
        else:
            x = torch.randn(2, batch, channels, 6, 5, generator=g).to(DEVICE)
            out = mixshare_ops.box_mix(x, boxes, w_in, w_out, 1.0, backend="triton")
            ref = reference.box_mix(x.cpu(), boxes.cpu(), w_in.cpu(), w_out.cpu(), 1.0)
        assert_close(out.cpu(), ref)

    run(3, 4)
    first = len(benchmarked)
    assert first >= 2, "the candidates should prune to at least two tiles here"
    for batch in (5, 1, 16):
        run(batch, 4)
    assert len(benchmarked) == first, "a new batch size benchmarked again"
    assert len(tuner.cache) == 1
    run(3, 12)
    assert len(benchmarked) > first and len(tuner.cache) == 2


# ---------------------------------------------------------------------------
# The compiler's front end, without a GPU
# ---------------------------------------------------------------------------


_VARIANTS = 2 * 6 * 3 + 2 * 3 + 1  # layouts x feature kernels x widths, unmix_masks / cutmix_mask x widths, boxes


def test_every_variant_compiles():
    """Every kernel, both index widths (INT64 with int32 and with int64 sizes),
    both layouts, through Triton's front end for an sm_90 target: the
    interpreter runs kernels as Python and accepts code the compiler rejects."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "tests.test_triton_limits"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count(": ok") == _VARIANTS, proc.stdout



def test_float64_root_is_correctly_rounded_in_ptx():
    """The box kernel's float64 root compiles to sqrt.rn.f64 (IEEE round to
    nearest) for an sm_90 target, never an approximation: the cut size rule
    depends on the last bit of the root."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "tests.test_triton_limits", "boxes-ptx"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    roots = [line for line in proc.stdout.splitlines() if "sqrt." in line and not line.startswith("//")]
    assert roots and all("sqrt.rn.f64" in line for line in roots), proc.stdout


def _boxes_ptx() -> int:
    """Print the sqrt instructions of the float64 box kernel's sm_90 PTX; 3 if
    this Triton cannot compile for a CUDA target here."""
    try:
        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import ASTSource
        from triton.runtime.jit import JITFunction

        fn = _kernel("cutmix_boxes_kernel")
        while not isinstance(fn, JITFunction):
            fn = fn.fn
        consts = {"OPMATH": tl.float64, "BLOCK": 256}
        signature = {arg: "constexpr" if arg in consts else "*i32" if arg == "boxes_ptr"
                     else "*fp64" if arg.endswith("_ptr") else "i32" for arg in fn.arg_names}
        ptx = triton.compile(ASTSource(fn, signature, consts), target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    except Exception as exc:  # noqa: BLE001
        print(f"no Triton PTX compiler for a CUDA target here: {exc!r}")
        return 3
    print("\n".join(line.strip() for line in ptx.splitlines() if "sqrt" in line))
    return 0


def _compile_front_end() -> int:
    """Triton IR of every kernel variant (run without TRITON_INTERPRET); 3 if
    this Triton has no usable front end for a CUDA target."""
    try:
        import triton.language as tl
        from triton._C.libtriton import ir
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import ASTSource, make_backend
        from triton.runtime.jit import JITFunction

        target = GPUTarget("cuda", 90, 32)
        backend = make_backend(target)
        options = backend.parse_options({"num_warps": 4})
        codegen_fns, module_map = backend.get_codegen_implementation(options), backend.get_module_map()
    except Exception as exc:  # noqa: BLE001
        print(f"no Triton front end for a CUDA target here: {exc!r}")
        return 3
    from mixshare_ops.triton import _common

    assert not _common.INTERPRET
    wide_args = {"C", "HW", "height", "width", "h", "w", "box_h", "box_w", "stride_m", "stride_b", "out_stride_m"}

    def compile_one(kernel, consts, wide, label):
        fn = kernel
        while not isinstance(fn, JITFunction):
            fn = fn.fn
        signature = {}
        for arg in fn.arg_names:
            if arg in consts:
                signature[arg] = "constexpr"
            elif arg.endswith("_ptr"):
                signature[arg] = "*i32" if arg == "boxes_ptr" else "*fp32"
            elif arg in ("scale", "ratio"):
                signature[arg] = "fp32"
            else:
                signature[arg] = "i64" if wide and arg in wide_args else "i32"
        context = ir.context()
        ir.load_dialects(context)
        backend.load_dialects(context)
        ASTSource(fn, signature, consts).make_ir(target, options, codegen_fns, module_map, context)
        print(f"{label}: ok", flush=True)

    common = dict(M=3, MB=4, OPMATH=tl.float32, CB=16, PB=64)
    feature_kernels = [
        ("box_mix_kernel", dict(scale_ptr=None, CHUNKS=2)),
        ("box_mix_backward_kernel", dict(scale_ptr=None, CHUNKS=2)),
        ("cutmix_unmix_kernel", dict(ratio_ptr=None, DEFAULT_W=False, CHUNKS=2)),
        ("cutmix_unmix_backward_kernel", dict(ratio_ptr=None, DEFAULT_W=False, CHUNKS=2)),
        ("cutmix_unmix_pool_kernel", dict(NUM_PB=3)),
        ("cutmix_unmix_pool_backward_kernel", dict(CHUNKS=2)),
    ]
    widths = [(False, False), (True, False), (True, True)]  # (INT64, int64 size arguments)
    for int64, wide in widths:
        for channels_last in (False, True):
            for name, extra in feature_kernels:
                compile_one(_kernel(name), {**common, **extra, "CHANNELS_LAST": channels_last, "INT64": int64},
                            wide, f"{name} INT64={int64} wide={wide} channels_last={channels_last}")
        compile_one(_kernel("unmix_masks_kernel"), dict(M=3, MB=4, DEFAULT_W=False, MASKED=True, OPMATH=tl.float32,
                                                        PB=64, NUM_PB=3, INT64=int64, ratio_ptr=None),
                    wide, f"unmix_masks_kernel INT64={int64} wide={wide}")
        compile_one(_kernel("cutmix_mask_kernel"), dict(BH=8, BW=64, INT64=int64), wide,
                    f"cutmix_mask_kernel INT64={int64} wide={wide}")
    compile_one(_kernel("cutmix_boxes_kernel"), dict(OPMATH=tl.float32, BLOCK=256), False, "cutmix_boxes_kernel")
    return 0


if __name__ == "__main__":
    sys.exit(_boxes_ptx() if sys.argv[1:] == ["boxes-ptx"] else _compile_front_end())
