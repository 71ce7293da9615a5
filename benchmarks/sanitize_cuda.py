"""Every CUDA and Triton kernel once, forward and backward, both layouts, for
``compute-sanitizer --tool memcheck|racecheck python -m benchmarks.sanitize_cuda``.

Small odd shapes (partial vector tails, boxes touching the borders, empty and
full boxes) keep the sanitizer run short; results are checked against the
reference so that a kernel that silently writes nothing fails too.
"""

from __future__ import annotations

import sys

import torch

import mixshare_ops
from mixshare_ops import reference


def _boxes(batch, h, w, device):
    boxes = torch.tensor([[0, 0, h, w], [0, 0, 0, 0], [1, 2, h - 1, w], [h // 2, 0, h, w // 2]], dtype=torch.int32)
    return boxes.repeat((batch + 3) // 4, 1)[:batch].to(device)


def run(backend: str, device: torch.device) -> int:
    failures = 0
    b, c, h, w = 6, 13, 11, 9
    for dtype in (torch.float32, torch.bfloat16):
        for channels_last in (False, True):
            boxes = _boxes(b, h, w, device)
            x = torch.randn(2, b, c, h, w, device=device, dtype=dtype)
            if channels_last:
                x = torch.stack([t.contiguous(memory_format=torch.channels_last) for t in x])
            x.requires_grad_()
            eye = torch.eye(2, device=device)
            inside, outside = eye[0].expand(b, 2), eye[1].expand(b, 2)
            mixed = mixshare_ops.box_mix(x, boxes, inside, outside, 2.0, backend=backend)
            expect = reference.box_mix(x.detach(), boxes, inside, outside, 2.0)
            failures += not torch.allclose(mixed.float(), expect.float(), atol=1e-2, rtol=1e-2)
            mixed.sum().backward()

            f = torch.randn(b, c, 4, 3, device=device, dtype=dtype)
            if channels_last:
                f = f.contiguous(memory_format=torch.channels_last)
            f.requires_grad_()
            for normalize in ("mean", "masked"):
                pooled = mixshare_ops.cutmix_unmix_pool(
                    f, boxes, box_size=(h, w), ratio=0.3, channels=7, normalize=normalize, backend=backend
                )
                expect = reference.cutmix_unmix_pool(
                    f.detach(), boxes, box_size=(h, w), ratio=0.3, channels=7, normalize=normalize
                )
                failures += not torch.allclose(pooled.float(), expect.float(), atol=1e-2, rtol=1e-2)
                pooled.sum().backward()
            unmixed = mixshare_ops.cutmix_unmix(f, boxes, box_size=(h, w), ratio=0.3, channels=7, backend=backend)
            expect = reference.cutmix_unmix(f.detach(), boxes, box_size=(h, w), ratio=0.3, channels=7)
            failures += not torch.allclose(unmixed.float(), expect.float(), atol=1e-2, rtol=1e-2)
            unmixed.sum().backward()
            mask = mixshare_ops.cutmix_mask(boxes, h, w, dtype, backend=backend)
            failures += not torch.equal(mask, reference.cutmix_mask(boxes, h, w, dtype))
        lam = torch.rand(b, device=device)
        center = torch.rand(b, 2, device=device)
        got = mixshare_ops.cutmix_boxes(lam, center, h, w, backend=backend)[0]
        failures += not torch.equal(got, reference.cutmix_boxes(lam, center, h, w)[0])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return failures


def main() -> int:
    device = torch.device("cuda")
    backends = sys.argv[1:] or [b for b in ("cuda", "triton") if b in mixshare_ops.available_backends(device)]
    failures = 0
    for backend in backends:
        n = run(backend, device)
        print(f"{backend}: {'ok' if n == 0 else f'{n} mismatches'}")
        failures += n
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
