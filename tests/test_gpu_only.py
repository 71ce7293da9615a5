"""bf16 autocast and channels_last apply on CUDA devices only (mixshare.runtime.gpu_only), in
training, evaluation and the benchmarks alike."""

import pytest
import torch

from mixshare import runtime
from mixshare.evaluate import collect_logits


@pytest.mark.parametrize("wanted, device, expected", [
    (True, "cuda", True), (True, "cuda:1", True), (True, torch.device("cuda", 0), True),
    (True, "cpu", False), (True, "meta", False), (False, "cuda", False), (False, "cpu", False),
])
def test_gpu_only(wanted, device, expected):
    assert runtime.gpu_only(wanted, device) is expected


class _Recorder(torch.nn.Module):
    """predict(images [N, 1]) -> [1, N, 2] logits; records whether CUDA autocast was on."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 2)
        self.autocast = []

    def predict(self, images):
        self.autocast.append(torch.is_autocast_enabled("cuda"))
        return self.linear(images)[None]


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("bf16", [False, True])
def test_evaluation_autocasts_only_on_cuda(device, bf16):
    model = _Recorder().to(device)
    images = torch.linspace(-1, 1, 6, device=device)[:, None]
    logits = collect_logits(model, images, batch_size=4, bf16=bf16)
    on = bf16 and device == "cuda"
    assert model.autocast == [on, on]
    assert logits.dtype == torch.float32 and logits.shape == (1, 6, 2)
    if not on:
        assert torch.equal(logits, model.linear(images)[None].detach())


def test_bf16_autocast_off_the_gpu_changes_nothing():
    with runtime.bf16_autocast(True, "cpu"):
        assert not torch.is_autocast_enabled("cuda")
        assert not torch.is_autocast_enabled("cpu")
