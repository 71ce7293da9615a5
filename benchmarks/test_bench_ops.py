"""pytest-benchmark suite of the ops: every (op, mode, shape, layout, M, dtype, provider) case.

Each round is one call followed by a device synchronisation, so CUDA times
are complete. ``python -m benchmarks.report`` adds GB/s, ratios and plots.
"""

import pytest
import torch

import mixshare_ops
from benchmarks import cases, timing


def _device_type(config) -> str:
    """The ``device`` fixture's device type (``--bench-device``), to pick its shapes."""
    name = config.getoption("--bench-device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _params(quick: bool, device_type: str):
    shapes = cases.quick_shapes() if quick else cases.cuda_shapes() if device_type == "cuda" else cases.cpu_shapes()
    for spec in cases.iter_cases(shapes, list(cases.DTYPES), list(cases.PROVIDERS)):
        for mode in cases.modes_for(spec.op):
            variant = "".join(f"-{name}" for name in cases.variant_names(spec.layout, spec.subnets))
            yield pytest.param(
                spec, mode, id=f"{spec.op}-{mode}-{spec.shape.name}-{spec.dtype_name}-{spec.provider}{variant}"
            )


def pytest_generate_tests(metafunc):
    if "op_case" in metafunc.fixturenames:
        params = list(_params(metafunc.config.getoption("--quick"), _device_type(metafunc.config)))
        metafunc.parametrize("op_case", [p.values for p in params], ids=[p.id for p in params])


def test_op(benchmark, device, op_case):
    spec, mode = op_case
    provider, dtype, shape = spec.provider, spec.dtype_name, spec.shape
    if provider not in cases.default_providers(device):
        pytest.skip(f"{provider} does not run on {device.type} here")
    cases.allow_many_recompiles()
    case = spec.make(device)
    with mixshare_ops.value_checks(False):
        fn = case.call(mode)

        def synced():
            fn()
            timing.synchronize(device)

        benchmark.extra_info.update(bytes=case.bytes(mode), provider=provider, dtype=dtype, shape=shape.label,
                                    layout=spec.layout, subnets=spec.subnets)
        benchmark.pedantic(synced, warmup_rounds=3, rounds=20 if shape.batch > 8 else 5, iterations=1)
