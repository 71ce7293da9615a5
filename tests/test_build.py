"""Build paths: CMake library + load_library, nvcc -c of every .cu, setup.py without torch."""

import ast
import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest
import torch
import torch.utils.cpp_extension

import mixshare_ops

ROOT = pathlib.Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not on PATH")
def test_cmake_library_loads_and_matches_reference(tmp_path):
    build = tmp_path / "build"
    configure = [
        "cmake", "-S", str(ROOT), "-B", str(build), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        "-DMIXSHARE_OPS_CUDA=OFF",
    ]
    subprocess.run(configure, check=True, capture_output=True, text=True)
    result = subprocess.run(
        ["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (library,) = build.glob("libmixshare_ops*.so")
    # A fresh interpreter that never imports the mixshare_ops package, so the
    # ops come from the CMake-built library alone.
    script = textwrap.dedent(
        f"""
        import importlib.util, sys, types, torch
        torch.ops.load_library({str(library)!r})
        # The package's modules without its __init__ (which would load _C): the reference's imports.
        package = types.ModuleType("mixshare_ops")
        package.__path__ = [{str(ROOT / "mixshare_ops")!r}]
        sys.modules["mixshare_ops"] = package
        spec = importlib.util.spec_from_file_location("ref", {str(ROOT / "mixshare_ops" / "reference.py")!r})
        ref = importlib.util.module_from_spec(spec); spec.loader.exec_module(ref)
        ops = torch.ops.mixshare_ops
        boxes, area = ops.cutmix_boxes(torch.rand(5), torch.rand(5, 2), 8, 8)
        x = torch.randn(2, 5, 3, 8, 8)
        w_in, w_out = torch.rand(5, 2), torch.rand(5, 2)
        torch.testing.assert_close(ops.box_mix(x, boxes, w_in, w_out, 2.0), ref.box_mix(x, boxes, w_in, w_out, 2.0))
        # The autograd formulas are in the library too (csrc/autograd.cpp).
        x_ops, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        g = torch.randn(5, 3, 8, 8)
        ops.box_mix(x_ops, boxes, w_in, w_out, 2.0).backward(g)
        ref.box_mix(x_ref, boxes, w_in, w_out, 2.0).backward(g)
        torch.testing.assert_close(x_ops.grad, x_ref.grad)
        assert ops._cpu_parallel_for_threads(1 << 16) == torch.get_num_threads(), "built without OpenMP?"
        f = torch.randn(5, 4, 4, 4)
        torch.testing.assert_close(
            ops.cutmix_unmix_pool(f, boxes, None, None, 8, 8, 0.5, 4, "masked"),
            ref.cutmix_unmix_pool(f, boxes, box_size=(8, 8), ratio=0.5))
        print("ok")
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-4000:]


needs_parallel_torch = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and torch.backends.openmp.is_available() and torch.get_num_threads() > 1),
    reason="needs a Linux torch with OpenMP and more than one thread",
)


@needs_parallel_torch
@pytest.mark.skipif(not mixshare_ops.backend_info()["cpu_kernels"], reason="C++ extension not built")
def test_cpu_kernels_use_torch_threads():
    """The extension is built with OpenMP: its parallel loops use torch's threads, not one."""
    threads = torch.get_num_threads()
    assert mixshare_ops.backend_info()["cpu_kernel_threads"] == threads
    torch.set_num_threads(1)
    try:
        assert torch.ops.mixshare_ops._cpu_parallel_for_threads(1 << 16) == 1
    finally:
        torch.set_num_threads(threads)


@needs_parallel_torch
@pytest.mark.skipif(not mixshare_ops.backend_info()["cpu_kernels"], reason="C++ extension not built")
def test_one_openmp_runtime_is_loaded():
    """Linking -fopenmp must not load a second OpenMP runtime beside torch's: a fresh process that
    runs a compiled kernel maps one (the suite's own process may hold others, e.g. scikit-learn's)."""
    script = ("import pathlib, torch, mixshare_ops; "
              "w = torch.tensor([[1.0, 0.0]] * 4); "
              "mixshare_ops.box_mix(torch.rand(2, 4, 3, 8, 8), torch.tensor([[0, 0, 4, 4]] * 4, dtype=torch.int32), "
              "w, w.flip(1), backend='cpu'); "
              "maps = pathlib.Path('/proc/self/maps').read_text().splitlines(); "
              "print(sorted({l.split()[-1] for l in maps if any(n in l for n in ('libgomp', 'libiomp', 'libomp'))}))")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-4000:]
    runtimes = ast.literal_eval(run.stdout.strip().splitlines()[-1])
    assert len(runtimes) == 1, runtimes


def test_cpu_parallel_for_threads_rejects_bad_count():
    if not mixshare_ops.backend_info()["cpu_kernels"]:
        pytest.skip("C++ extension not built")
    with pytest.raises(RuntimeError, match="work_items must be positive"):
        torch.ops.mixshare_ops._cpu_parallel_for_threads(0)


def _nvcc_compile(source: pathlib.Path, out_dir: pathlib.Path) -> subprocess.CompletedProcess:
    include = [ROOT / "csrc", *torch.utils.cpp_extension.include_paths(), sysconfig.get_paths()["include"]]
    cmd = [
        "nvcc", "-c", "-std=c++20", "--expt-relaxed-constexpr", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
        "-gencode", "arch=compute_90,code=sm_90", "-Xcompiler", "-fPIC",
        *[f"-I{p}" for p in include], "-o", str(out_dir / (source.stem + ".o")), str(source),
    ]
    return subprocess.run(cmd, capture_output=True, text=True)


needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")


@pytest.fixture(scope="module")
def cuda_objects(tmp_path_factory) -> tuple[pathlib.Path, dict[pathlib.Path, subprocess.CompletedProcess]]:
    """(directory, {source: nvcc result}): every .cu file compiled once, sm_90, into one directory."""
    assert CUDA_SOURCES, "no CUDA sources found"
    out_dir = tmp_path_factory.mktemp("cuda_objects")
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return out_dir, dict(zip(CUDA_SOURCES, pool.map(lambda s: _nvcc_compile(s, out_dir), CUDA_SOURCES)))


@pytest.mark.slow
@needs_nvcc
def test_cuda_sources_compile(cuda_objects):
    """Every .cu file compiles with nvcc (no GPU needed, not linked)."""
    _, results = cuda_objects
    failures = {s.name: r.stderr[-3000:] for s, r in results.items() if r.returncode != 0}
    assert not failures, failures


# Element kernels that write each chunk of VEC = 16 / sizeof(T) elements with
# one cuda::store_vec, by source file, with {T: sizeof(T)} of their dtypes.
_FLOATING = {"float": 4, "double": 8, "c10::Half": 2, "c10::BFloat16": 2}
_CHUNK_STORE_KERNELS = {
    "box_mix.cu": {"box_mix_kernel": _FLOATING, "box_mix_backward_kernel": _FLOATING},
    "cutmix_unmix.cu": {"cutmix_unmix_kernel": _FLOATING, "cutmix_unmix_backward_kernel": _FLOATING},
    "cutmix_unmix_pool.cu": {"pool_backward_kernel": _FLOATING},
    "cutmix_boxes.cu": {
        "cutmix_mask_kernel": {
            **_FLOATING, "bool": 1, "unsigned char": 1, "signed char": 1, "short": 2, "int": 4, "long": 8,
        },
    },
}
_SCALAR_STORE = {1: "STG.E.U8", 2: "STG.E.U16", 4: "STG.E", 8: "STG.E.64"}


@pytest.mark.slow
@needs_nvcc
@pytest.mark.skipif(shutil.which("c++filt") is None, reason="c++filt not on PATH")
def test_vector_kernels_store_whole_chunks_in_sass(cuda_objects):
    """sm_90 SASS of the chunked element kernels: each vector instantiation
    (VEC = 16 / sizeof(T)) stores only with STG.E.128, one per chunk, also in
    the copies of unrolled loops, and reads no 16-bit scalars; each VEC = 1
    fallback exists and stores scalars of sizeof(T)."""
    from benchmarks import sass_stores

    cuobjdump = sass_stores.find_cuobjdump()
    if cuobjdump is None:
        pytest.skip("cuobjdump not found")
    out_dir, results = cuda_objects
    compiled = {s.name for s, r in results.items() if r.returncode == 0}
    assert set(_CHUNK_STORE_KERNELS) <= compiled, "not compiled, see test_cuda_sources_compile"
    objects = [out_dir / (pathlib.Path(source).stem + ".o") for source in _CHUNK_STORE_KERNELS]
    dumps = sass_stores.dump_objects(objects, cuobjdump)
    problems = []
    for obj, families in zip(objects, _CHUNK_STORE_KERNELS.values()):
        kernels = dumps[str(obj)]
        for family, dtypes in families.items():
            for dtype, size in dtypes.items():
                of_dtype = [k for k in kernels if k.short_name.startswith(f"{family}<{dtype},")]
                wide = [k for k in of_dtype if k.vec == 16 // size]
                scalar = [k for k in of_dtype if k.vec == 1]
                if not wide or not scalar or len(wide) + len(scalar) != len(of_dtype):
                    problems.append(f"{family}<{dtype}>: instantiations {[k.short_name for k in of_dtype]}")
                problems += [f"{k.short_name}: stores {k.stores}" for k in wide if set(k.stores) != {"STG.E.128"}]
                problems += [f"{k.short_name}: 16-bit loads {k.loads}" for k in wide if "LDG.E.U16" in k.loads]
                problems += [
                    f"{k.short_name}: stores {k.stores}" for k in scalar if set(k.stores) != {_SCALAR_STORE[size]}
                ]
        # The module's own check agrees.
        problems += [f"{k.short_name}: regression {k.stores}" for k in sass_stores.regressions(kernels)]
    assert not problems, "\n".join(dict.fromkeys(problems))


needs_extension = pytest.mark.skipif(not mixshare_ops.backend_info()["extension_loaded"], reason="C++ extension not built")


@needs_extension
def test_current_library_is_not_outdated():
    assert mixshare_ops._extension.outdated_reason() is None


@needs_extension
@pytest.mark.parametrize("missing", ["operator", "autograd"])
def test_outdated_library_is_named(monkeypatch, missing):
    """A library without an operator of the schema list or without an Autograd kernel is outdated."""
    if missing == "operator":
        monkeypatch.setattr(mixshare_ops._extension, "_has_operator", lambda op: op != "_value_checks_enabled")
        expected = "no operator _value_checks_enabled"
    else:
        has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
        monkeypatch.setattr(
            torch._C, "_dispatch_has_kernel_for_dispatch_key",
            lambda op, key: (op, key) != ("mixshare_ops::box_mix", "Autograd") and has_kernel(op, key),
        )
        expected = "no Autograd kernel for box_mix"
    assert mixshare_ops._extension.outdated_reason() == expected


@needs_extension
def test_outdated_library_is_refused_at_load():
    """Loaded in a fresh interpreter whose _C lacks box_mix's Autograd kernel: the extension counts
    as not loaded, with the rebuild command as its load error, and only the other backends remain."""
    script = textwrap.dedent(
        """
        import json, torch
        has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
        torch._C._dispatch_has_kernel_for_dispatch_key = (
            lambda op, key: False if (op, key) == ("mixshare_ops::box_mix", "Autograd") else has_kernel(op, key))
        import mixshare_ops
        info = mixshare_ops.backend_info()
        x = torch.randn(2, 1, 1, 4, 4)
        boxes = torch.tensor([[0, 0, 2, 2]], dtype=torch.int32)
        w = torch.tensor([[1.0, 0.0]])
        with mixshare_ops.value_checks(False):
            switch = mixshare_ops.value_checks_enabled()
        info["value_checks"] = [switch, mixshare_ops.value_checks_enabled()]
        mixshare_ops.box_mix(x, boxes, w, 1 - w, 2.0)
        print(json.dumps(info))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MIXSHARE_OPS_BACKEND", "TRITON_INTERPRET")}
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", script], cwd=ROOT, capture_output=True, text=True,
                         env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    info = json.loads(run.stdout.strip().splitlines()[-1])
    assert not info["extension_loaded"] and not info["cpu_kernels"]
    assert info["extension_error"] == (
        "mixshare_ops/_C was built from older sources (no Autograd kernel for box_mix); "
        "rebuild: pip install --no-build-isolation -e ."
    )
    assert "cpu" not in info["available_backends"]
    assert info["value_checks"] == [False, True]  # the Python switch stands in for the refused library's
