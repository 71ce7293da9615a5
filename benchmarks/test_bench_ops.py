"""pytest-benchmark suite of the ops: every (op, mode, shape, dtype, provider) case.

Each round is one call followed by a device synchronisation, so CUDA times
are complete. ``python -m benchmarks.report`` adds GB/s, ratios and plots.
"""

import pytest
import torch

import mixshare_ops
from benchmarks import cases, timing


def _params(quick: bool):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = cases.quick_shapes() if quick else cases.cuda_shapes() if device.type == "cuda" else cases.cpu_shapes()
    for op, shape, dtype, provider in cases.iter_cases(shapes, list(cases.DTYPES), list(cases.PROVIDERS)):
        for mode in cases.modes_for(op):
            yield pytest.param(op, mode, shape, dtype, provider, id=f"{op}-{mode}-{shape.name}-{dtype}-{provider}")


def pytest_generate_tests(metafunc):
    if "op_case" in metafunc.fixturenames:
        quick = metafunc.config.getoption("--quick")
        metafunc.parametrize("op_case", [p.values for p in _params(quick)], ids=[p.id for p in _params(quick)])


def test_op(benchmark, device, op_case):
    op, mode, shape, dtype, provider = op_case
    if provider not in cases.default_providers(device):
        pytest.skip(f"{provider} does not run on {device.type} here")
    cases.allow_many_recompiles()
    case = cases.make_case(op, shape, dtype, provider, device)
    with mixshare_ops.value_checks(False):
        fn = case.call(mode)

        def synced():
            fn()
            timing.synchronize(device)

        benchmark.extra_info.update(bytes=case.bytes(mode), provider=provider, dtype=dtype, shape=shape.label)
        benchmark.pedantic(synced, warmup_rounds=3, rounds=20 if shape.batch > 8 else 5, iterations=1)
