"""Builds mixshare: the mixshare_ops and mixshare packages, and mixshare_ops._C
(C++ CPU kernels, plus CUDA kernels where torch has CUDA) when torch is importable.

* ``pip install --no-build-isolation .`` (or ``-e .``): the extension is
  compiled now, against the torch already installed.
* ``pip install .``: the isolated build environment has no torch, so the wheel
  is pure Python; it carries the C++/CUDA sources (mixshare_ops/csrc), which
  ``import mixshare_ops`` compiles once into torch's extension cache
  (mixshare_ops/_extension.py).

Either way the wheel carries csrc/.
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # an isolated build: no torch, a pure-Python wheel
    torch = None

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_SUFFIXES = (".cpp", ".h", ".cu", ".cuh")


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
    if torch is None:
        return []
    rel = lambda pattern: sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))  # noqa: E731
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    # The C++ standard and Py_LIMITED_API come from torch's BuildExtension.
    # -g0 (last, so it wins over the -g of Python's own compiler flags): no
    # debug information. Generating it for torch's headers took 40-60% of
    # each object's compile time; the machine code is the same without it.
    if os.environ.get("MIXSHARE_OPS_DEBUG") == "1":
        cxx_flags = ["-O0", "-g"]
    else:
        cxx_flags = ["-O3", "-g0"]
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


class BuildPyWithSources(build_py):
    """Also copies csrc/ into the wheel as mixshare_ops/csrc (what the first
    import compiles when the wheel has no _C)."""

    def run(self):
        super().run()
        if self.editable_mode:  # an editable install finds csrc/ in the source tree
            return
        target = os.path.join(self.build_lib, "mixshare_ops", "csrc")
        for folder, _, files in os.walk(os.path.join(HERE, "csrc")):
            for name in sorted(f for f in files if f.endswith(SOURCE_SUFFIXES)):
                source = os.path.join(folder, name)
                dest = os.path.join(target, os.path.relpath(source, os.path.join(HERE, "csrc")))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copyfile(source, dest)


def runtime_requirements() -> list[str]:
    """The package names of requirements.txt (one list for pip, make and this file)."""
    with open(os.path.join(HERE, "requirements.txt")) as fh:
        return [line.split("#", 1)[0].strip() for line in fh if line.split("#", 1)[0].strip()]


RUNTIME_REQUIREMENTS = runtime_requirements()
cmdclass = {"build_py": BuildPyWithSources}
options = {}
if torch is not None:
    cmdclass["build_ext"] = BuildExtension.with_options(no_python_abi_suffix=True)
    options["bdist_wheel"] = {"py_limited_api": "cp310"}

setup(
    name="mixshare",
    version="0.1.0",
    description="Fused CutMix mixing/unmixing ops for MIMO ensembles, and the MixShare toolkit built on them",
    packages=find_packages(include=["mixshare_ops", "mixshare_ops.*", "mixshare", "mixshare.*"]),
    python_requires=">=3.10",
    # torch is not listed: it is installed first (a CPU or a CUDA build, as
    # wanted), the extension is compiled against it, and declaring it here
    # could let pip replace it. ninja compiles the kernels on first use.
    install_requires=RUNTIME_REQUIREMENTS,
    extras_require={"triton": ["triton"]},
    entry_points={"console_scripts": ["mixshare=mixshare.cli:run"]},
    ext_modules=extensions(),
    cmdclass=cmdclass,
    options=options,
)
