"""pytest-benchmark suite of the training step: seconds per step per variant."""

import pytest
import torch

import mixshare_ops
from benchmarks import timing, train_step


def pytest_generate_tests(metafunc):
    if "train_case" not in metafunc.fixturenames:
        return
    if metafunc.config.getoption("--quick"):
        settings = train_step.quick_settings()
    else:
        settings = train_step.cuda_settings() if torch.cuda.is_available() else train_step.cpu_settings()
    params = [
        pytest.param(s, v, id=f"{s.model}-{v}")
        for s in settings
        for v in ("single", "mixshare/fused", "mixshare/reference", "mixmo-dataloader")
    ]
    metafunc.parametrize("train_case", [p.values for p in params], ids=[p.id for p in params])


def test_train_step(benchmark, device, train_case):
    setting, variant = train_case
    if variant == "mixshare/fused":  # the first fused backend usable here (cuda, triton or cpu)
        variant = next(v for v in train_step.variants(device) if v.startswith("mixshare/"))
    step, backend = train_step.make_step(variant, setting, device)
    with train_step.forced_backend(backend), mixshare_ops.value_checks(False):

        def synced():
            step()
            timing.synchronize(device)

        benchmark.extra_info.update(model=setting.model, rows=setting.rows, variant=variant)
        benchmark.pedantic(synced, warmup_rounds=2, rounds=5, iterations=1)
