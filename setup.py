"""Builds mixshare_ops._C (C++ CPU kernels, plus CUDA kernels where torch has CUDA).

Install with ``pip install --no-build-isolation .`` so that the extension is
compiled against the torch already installed in the environment.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - exercised by an isolated `pip install .`
    sys.exit(
        "mixshare: PyTorch is not importable in this build environment.\n"
        "Install torch first (on CPU-only machines: pip install torch==2.13.0), then run\n"
        "    pip install --no-build-isolation .\n"
        "so that the C++/CUDA extension is built against the torch you already have."
    )

HERE = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    """Build CUDA kernels when torch has CUDA and a toolkit is found.

    MIXSHARE_OPS_CUDA=0 turns them off, =1 asks for them without a visible GPU
    (set TORCH_CUDA_ARCH_LIST then); by default a visible GPU decides.
    """
    flag = os.environ.get("MIXSHARE_OPS_CUDA", "auto").lower()
    if flag in ("0", "false", "no"):
        return False
    buildable = torch.version.cuda is not None and CUDA_HOME is not None
    if flag in ("1", "true", "yes"):
        if not buildable:
            sys.exit("MIXSHARE_OPS_CUDA=1 but torch has no CUDA support or no CUDA toolkit (CUDA_HOME) was found")
        return True
    return buildable and torch.cuda.is_available()


def openmp_flags() -> list[str]:
    """-fopenmp where torch itself uses OpenMP (Linux builds of torch do).

    ATen's at::parallel_for is a header template: compiled without OpenMP it
    runs its loop on one thread. With -fopenmp the kernels share torch's
    OpenMP runtime and its thread count (torch.set_num_threads).
    MIXSHARE_OPS_OPENMP=0 turns it off.
    """
    if os.environ.get("MIXSHARE_OPS_OPENMP", "1").lower() in ("0", "false", "no"):
        return []
    if not sys.platform.startswith("linux") or not torch.backends.openmp.is_available():
        return []
    return ["-fopenmp"]


def extensions():
    rel = lambda pattern: sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))  # noqa: E731
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    # The C++ standard and Py_LIMITED_API come from torch's BuildExtension.
    cxx_flags = ["-O0", "-g"] if os.environ.get("MIXSHARE_OPS_DEBUG") == "1" else ["-O3"]
    omp = openmp_flags()
    cxx_flags += omp
    if want_cuda():
        ext = CUDAExtension(
            "mixshare_ops._C",
            sources + rel("csrc/cuda/*.cu"),
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
            extra_link_args=omp,
            py_limited_api=True,
        )
    else:
        ext = CppExtension(
            "mixshare_ops._C",
            sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=omp,
            py_limited_api=True,
        )
    return [ext]


setup(
    name="mixshare",
    version="0.1.0",
    description="Fused CutMix mixing/unmixing ops for MIMO ensembles, and the MixShare toolkit built on them",
    packages=find_packages(include=["mixshare_ops", "mixshare_ops.*", "mixshare", "mixshare.*"]),
    python_requires=">=3.10",
    # torch is not listed: the extension is compiled against the torch that is
    # already installed, and declaring it here could let pip replace it.
    install_requires=["numpy", "matplotlib", "tqdm", "PyYAML", "scikit-learn"],
    extras_require={"triton": ["triton"]},
    entry_points={"console_scripts": ["mixshare=mixshare.cli:main"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
