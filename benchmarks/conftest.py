"""pytest-benchmark suites: ``pytest benchmarks/ [--quick]`` (see benchmarks/README.md)."""

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", help="tiny shapes: a smoke run of the suites")
    parser.addoption("--bench-device", default="auto", choices=("auto", "cpu", "cuda"))


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    name = request.config.getoption("--bench-device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(name)
