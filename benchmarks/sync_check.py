"""No hidden host synchronisation: mask generation, mixing, unmixing and a
whole MixShare training step under ``torch.cuda.set_sync_debug_mode("error")``.

With value checks off (:func:`mixshare_ops.value_checks`), none of these may
copy data to the host or wait for the device; any that does raises.
"""

from __future__ import annotations

import torch

import mixshare_ops
from benchmarks.train_step import FusedStep, StepSetting, forced_backend


def _ops_once(device: torch.device, backend: str) -> None:
    generator = torch.Generator(device).manual_seed(0)
    boxes, _, _ = mixshare_ops.sample_cutmix_boxes(16, 32, 32, generator=generator, device=device, backend=backend)
    mixshare_ops.cutmix_mask(boxes, 32, 32, backend=backend)
    x = torch.randn(2, 16, 16, 32, 32, device=device, requires_grad=True)
    eye = torch.eye(2, device=device)
    mixed = mixshare_ops.box_mix(x, boxes, eye[0].expand(16, 2), eye[1].expand(16, 2), 2.0, backend=backend)
    features = torch.randn(16, 64, 8, 8, device=device, requires_grad=True)
    unmixed = mixshare_ops.cutmix_unmix(features, boxes, box_size=(32, 32), ratio=0.5, backend=backend)
    pooled = mixshare_ops.cutmix_unmix_pool(features, boxes, box_size=(32, 32), ratio=0.5, backend=backend)
    (mixed.sum() + unmixed.sum() + pooled.sum()).backward()


def check_no_sync(device: torch.device, backends: list[str]) -> dict[str, str]:
    """``{name: "ok" or the error}`` for each backend's ops and for a training step."""
    if device.type != "cuda":
        return {}
    results = {}
    step = FusedStep(StepSetting("wrn-10-1", 16), "mixshare-fadeout", device)
    for backend in backends:
        for name, run in ((f"ops/{backend}", lambda: _ops_once(device, backend)), (f"train-step/{backend}", step)):
            with forced_backend(backend), mixshare_ops.value_checks(False):
                run()  # warm-up: lazy initialisation may synchronise once
                torch.cuda.synchronize(device)
                torch.cuda.set_sync_debug_mode("error")
                try:
                    run()
                    results[name] = "ok"
                except RuntimeError as error:
                    results[name] = f"synchronises: {str(error).splitlines()[0]}"
                finally:
                    torch.cuda.set_sync_debug_mode("default")
                    torch.cuda.synchronize(device)
    return results
