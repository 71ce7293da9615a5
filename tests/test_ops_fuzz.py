"""The bounded property test of tests/fuzz_ops.py, one child process per operator family.

Each run draws random valid calls of every raw operator (they must match the
reference) and applies every breakage of tests.fuzz_ops.breakages to other
random valid calls (each must raise ValueError, TypeError or RuntimeError
naming the argument). A child process turns a crash into a failed test.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mixshare_ops
from tests.fuzz_ops import OPS

ROOT = Path(__file__).resolve().parents[1]
COMPILED = pytest.mark.skipif(not mixshare_ops.backend_info()["extension_loaded"], reason="C++ extension not built")
TRITON = pytest.mark.skipif("triton" not in mixshare_ops.available_backends("cpu"),
                            reason="triton interpreter not active")

RUNS = [  # (prefix, examples per operator, on meta tensors)
    pytest.param("", 150, False, id="compiled", marks=COMPILED),
    pytest.param("", 60, True, id="compiled-meta", marks=COMPILED),
    pytest.param("triton_", 40, False, id="triton", marks=TRITON),
    pytest.param("triton_", 40, True, id="triton-meta", marks=TRITON),
]


@pytest.mark.slow
@pytest.mark.parametrize("prefix, examples, meta", RUNS)
def test_raw_operators_refuse_random_bad_input_and_match_the_reference_on_good(prefix, examples, meta):
    command = [sys.executable, "-W", "ignore", "-m", "tests.fuzz_ops", "--prefix", prefix,
               "--examples", str(examples)] + (["--meta"] if meta else [])
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("MIXSHARE_OPS_BACKEND", None)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    report = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, f"exit {done.returncode} (a negative code is a signal: a crash)\n{report}"
    assert done.stdout.count("others refused") == len(OPS), report
