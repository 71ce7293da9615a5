"""Test set-up: the Triton interpreter on machines without a GPU.

TRITON_INTERPRET must be set before any Triton kernel is defined, so it is set
here, before the tests import mixshare_ops.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import mixshare_ops  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--require-backends", default="", metavar="BACKEND[,BACKEND]",
        help="fail the session at once unless each backend is usable here (so a GPU run cannot pass as skips)",
    )


def pytest_configure(config):
    required = [b for b in config.getoption("--require-backends").split(",") if b]
    missing = [b for b in required if b not in mixshare_ops.available_backends()]
    if missing:
        reason = mixshare_ops.backend_info()["extension_error"] or "not built with these kernels"
        raise pytest.UsageError(
            f"required backend(s) {', '.join(missing)} not usable here "
            f"(usable: {', '.join(mixshare_ops.available_backends())}; extension: {reason})"
        )


def pytest_report_header(config):
    info = mixshare_ops.backend_info()
    return (
        f"mixshare_ops backends: {', '.join(info['available_backends'])} "
        f"(extension loaded: {info['extension_loaded']}, TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')})"
    )


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """Tests pick backends explicitly; a developer's MIXSHARE_OPS_BACKEND must not leak in."""
    monkeypatch.delenv("MIXSHARE_OPS_BACKEND", raising=False)
