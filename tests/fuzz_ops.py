"""Bounded property test of the raw operators, ``torch.ops.mixshare_ops.<prefix><op>``.

Random valid calls (shapes, layouts, dtypes, boxes, weights, M, scalars) must
match the reference (for the backward operators: the reference's
vector-Jacobian product). Random invalid calls, one argument broken at a time,
(every breakage in :func:`breakages` of each random valid call) must raise
ValueError, TypeError or RuntimeError whose message names the broken
argument, and never return. tests/test_ops_fuzz.py runs this module in
a child process, so that a crash fails one test instead of ending the suite::

    python -m tests.fuzz_ops --prefix triton_ --examples 40
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from typing import Callable, Optional

if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is defined

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixshare_ops import backends, reference
from tests.cases import TOLERANCES, to_layout

OPS = (
    "cutmix_boxes", "cutmix_mask", "box_mix", "box_mix_backward",
    "cutmix_unmix", "cutmix_unmix_backward", "cutmix_unmix_pool", "cutmix_unmix_pool_backward",
)
ERRORS = (ValueError, TypeError, RuntimeError)
LIMIT = 2**31 - 1  # the largest grid side (int32 boxes)


@dataclasses.dataclass
class Call:
    """One call of operator ``name`` with positional ``args``; ``params`` names them."""

    name: str
    args: list
    params: list

    def index(self, param: str) -> int:
        return self.params.index(param)

    def get(self, param: str):
        return self.args[self.index(param)]

    def replace(self, **changes) -> "Call":
        args = list(self.args)
        for param, value in changes.items():
            args[self.index(param)] = value
        return Call(self.name, args, self.params)


PARAMS = {
    "cutmix_boxes": ["lam", "center", "height", "width", "check_values"],
    "cutmix_mask": ["boxes", "height", "width", "dtype"],
    "box_mix": ["x", "boxes", "inside_weight", "outside_weight", "scale"],
    "box_mix_backward": ["grad_out", "boxes", "inside_weight", "outside_weight", "scale"],
    "cutmix_unmix": ["features", "boxes", "inside_weight", "outside_weight", "box_height", "box_width", "ratio",
                     "channels"],
    "cutmix_unmix_pool": ["features", "boxes", "inside_weight", "outside_weight", "box_height", "box_width", "ratio",
                          "channels", "normalize"],
    "cutmix_unmix_pool_backward": ["grad_out", "boxes", "inside_weight", "outside_weight", "box_height", "box_width",
                                   "ratio", "channels", "normalize", "height", "width", "channels_last"],
}
PARAMS["cutmix_unmix_backward"] = ["grad_out"] + PARAMS["cutmix_unmix"][1:]


# ------------------------------------------------------------------ valid calls


def _layout(t: torch.Tensor, layout: str, dims: int) -> torch.Tensor:
    """``t`` ([..., C, H, W]) in one of the memory layouts the operators take."""
    if layout == "channels_last":
        return to_layout(t, True)
    if layout == "strided":  # every other column of a wider tensor: no dense layout
        wide = torch.empty(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    if layout == "broadcast" and dims == 5 and t.shape[0] > 0:  # one input for all M (stride 0)
        return t[:1].expand(t.shape)
    if layout == "transposed" and dims == 5:  # built [B, M, ...], transposed
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    return t


@st.composite
def boxes_on(draw, batch: int, height: int, width: int) -> torch.Tensor:
    rows = []
    for _ in range(batch):
        kind = draw(st.sampled_from(["any", "any", "empty", "full"]))
        if kind == "full":
            rows.append([0, 0, height, width])
            continue
        top, left = draw(st.integers(0, height)), draw(st.integers(0, width))
        if kind == "empty":
            rows.append([top, left, top, draw(st.integers(left, width))])
            continue
        rows.append([top, left, draw(st.integers(top, height)), draw(st.integers(left, width))])
    return torch.tensor(rows, dtype=torch.int32).reshape(batch, 4)


@st.composite
def weights(draw, batch: int, subnets: int, generator: torch.Generator) -> torch.Tensor:
    """[B, M] float32 weights, now and then with one non-finite entry (the reference says where it reaches)."""
    w = torch.rand((batch, subnets), generator=generator)
    if batch and draw(st.integers(0, 7)) == 0:
        w[draw(st.integers(0, batch - 1)), draw(st.integers(0, subnets - 1))] = draw(
            st.sampled_from([math.nan, math.inf, -math.inf]))
    return w


@st.composite
def valid_calls(draw, name: str, dtypes: list) -> Call:
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    params = PARAMS[name]
    batch = draw(st.integers(0, 4))
    if name == "cutmix_boxes":
        lam = torch.tensor(draw(st.lists(st.floats(0, 1), min_size=batch, max_size=batch)))
        center = torch.tensor(
            draw(st.lists(st.floats(0, 1, exclude_max=True, width=32), min_size=2 * batch, max_size=2 * batch))
        ).reshape(batch, 2)
        lam, center = lam.to(draw(st.sampled_from(dtypes))), center.to(draw(st.sampled_from(dtypes)))
        center = center.clamp(max=1 - torch.finfo(center.dtype).eps / 2)  # rounding must not reach 1
        size = st.one_of(st.integers(1, 40), st.integers(1, LIMIT))
        return Call(name, [lam, center, draw(size), draw(size), draw(st.booleans())], params)
    height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    if name == "cutmix_mask":
        return Call(name, [draw(boxes_on(batch, height, width)), height, width, draw(st.sampled_from(dtypes))], params)

    dtype = draw(st.sampled_from(dtypes))
    channels = draw(st.integers(0, 5))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "strided", "broadcast", "transposed"]))

    def tensor(*shape):
        return _layout(torch.randn(shape, generator=g, dtype=torch.float64).to(dtype), layout, len(shape))

    if name in ("box_mix", "box_mix_backward"):
        subnets = draw(st.integers(2, 4))
        first = tensor(subnets, batch, channels, height, width) if name == "box_mix" else tensor(
            batch, channels, height, width)
        inside, outside = draw(weights(batch, subnets, g)), draw(weights(batch, subnets, g))
        scale = draw(st.floats(-4, 4))
        return Call(name, [first, draw(boxes_on(batch, height, width)), inside, outside, scale], params)

    subnets = draw(st.sampled_from([None, 2, 3, 4]))
    inside = outside = None
    if subnets is not None:
        inside, outside = draw(weights(batch, subnets, g)), draw(weights(batch, subnets, g))
    box_height = draw(st.integers(height, 3 * height + 2))
    box_width = draw(st.integers(width, 3 * width + 2))
    boxes = draw(boxes_on(batch, box_height, box_width))
    ratio = draw(st.sampled_from([0.0, 1.0, draw(st.floats(0, 1))]))
    unmixed = draw(st.integers(0, channels))
    m = subnets or 2
    if name == "cutmix_unmix":
        first = tensor(batch, channels, height, width)
    elif name == "cutmix_unmix_backward":
        first = tensor(m, batch, channels, height, width)
    elif name == "cutmix_unmix_pool":
        first = tensor(batch, channels, height, width)
    else:
        first = torch.randn((m, batch, channels), generator=g, dtype=torch.float64).to(dtype)
    args = [first, boxes, inside, outside, box_height, box_width, ratio, unmixed]
    if name in ("cutmix_unmix_pool", "cutmix_unmix_pool_backward"):
        args.append(draw(st.sampled_from(["mean", "masked"])))
    if name == "cutmix_unmix_pool_backward":
        args += [height, width, draw(st.booleans())]
    return Call(name, args, params)


def expected(call: Call):
    """What the reference says the operator returns (float64 inside, then the operator's dtype)."""
    a = call.args
    if call.name == "cutmix_boxes":
        return reference.cutmix_boxes(*a[:4])
    if call.name == "cutmix_mask":
        return reference.cutmix_mask(*a)
    dtype = a[0].dtype

    def weights_of(args):
        return [w if w is None else w.double() for w in args[2:4]]

    if call.name == "box_mix":
        return reference.box_mix(a[0].double(), a[1], *weights_of(a), a[4]).to(dtype)
    if call.name == "box_mix_backward":
        subnets = a[2].shape[1]
        x = torch.zeros((subnets,) + tuple(a[0].shape), dtype=torch.float64, requires_grad=True)
        reference.box_mix(x, a[1], *weights_of(a), a[4]).backward(a[0].double())
        return x.grad.to(dtype)
    kwargs = dict(box_size=(a[4], a[5]), ratio=a[6], channels=a[7])
    if call.name == "cutmix_unmix":
        return reference.cutmix_unmix(a[0].double(), a[1], *weights_of(a), **kwargs).to(dtype)
    if call.name == "cutmix_unmix_pool":
        return reference.cutmix_unmix_pool(a[0].double(), a[1], *weights_of(a), normalize=a[8], **kwargs).to(dtype)
    if call.name == "cutmix_unmix_backward":
        features = torch.zeros(a[0].shape[1:], dtype=torch.float64, requires_grad=True)
        reference.cutmix_unmix(features, a[1], *weights_of(a), **kwargs).backward(a[0].double())
        return features.grad.to(dtype)
    batch, channels = a[0].shape[1:]
    features = torch.zeros((batch, channels, a[9], a[10]), dtype=torch.float64, requires_grad=True)
    reference.cutmix_unmix_pool(features, a[1], *weights_of(a), normalize=a[8], **kwargs).backward(a[0].double())
    return features.grad.to(dtype)


def check_valid(op, call: Call) -> None:
    out, want = op(*call.args), expected(call)
    if call.name == "cutmix_boxes":
        assert torch.equal(out[0], want[0]), f"boxes {out[0].tolist()} != reference {want[0].tolist()}"
        atol, rtol = TOLERANCES[want[1].dtype]
        torch.testing.assert_close(out[1], want[1], atol=atol, rtol=rtol)
        return
    if call.name == "cutmix_mask":
        assert out.dtype == want.dtype and torch.equal(out, want)
        return
    assert out.shape == want.shape and out.dtype == want.dtype, (out.shape, out.dtype, want.shape, want.dtype)
    atol, rtol = TOLERANCES[want.dtype]
    # Both sides round once from float32 (float64) arithmetic: a few units in the last place apart.
    scale = float(call.args[4]) if call.name.startswith("box_mix") else 1.0
    torch.testing.assert_close(out, want, atol=atol * max(1.0, abs(scale)) * 4, rtol=rtol, equal_nan=True)


# ---------------------------------------------------------------- invalid calls


def _on_meta(call: Call, param: str) -> Optional[Call]:
    tensors = [p for p, v in zip(call.params, call.args) if isinstance(v, torch.Tensor)]
    if len(tensors) < 2 or not isinstance(call.get(param), torch.Tensor):
        return None
    return call.replace(**{param: call.get(param).to("meta")})


def breakages(call: Call) -> list[tuple[str, Callable[[], Optional[Call]], str, bool]]:
    """(label, make the broken call or None where it does not apply, pattern its message must match,
    whether only a check of tensor values can see it)."""
    out = []
    a = {p: v for p, v in zip(call.params, call.args)}
    batch = a["boxes"].shape[0] if "boxes" in a else a["lam"].shape[0]

    def add(label, make, pattern, reads_values=False):
        out.append((label, make, pattern, reads_values))

    for param, value in a.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = re.escape(param)
        add(f"{param} on meta", lambda p=param: _on_meta(call, p), r"device")
        add(f"{param} one dim more", lambda p=param, v=value: call.replace(**{p: v.unsqueeze(0)}), name)
        if value.dim() >= 2:
            add(f"{param} one dim less", lambda p=param, v=value: call.replace(**{p: v.flatten(0, 1)}), name)
        if param == "boxes":
            for bad in (torch.int64, torch.float32, torch.int16):
                add(f"boxes {bad}", lambda bad=bad: call.replace(boxes=a["boxes"].to(bad)), r"boxes must be an int32")
            if call.name != "cutmix_mask":  # there the boxes set B
                add("boxes one row more",
                    lambda: call.replace(boxes=torch.cat([a["boxes"], torch.zeros((1, 4), dtype=torch.int32)])),
                    r"boxes must have one row per sample")
            add("boxes [B, 3]", lambda: call.replace(boxes=a["boxes"][:, :3].contiguous()), r"boxes must have shape")
            add("boxes as a list", lambda: call.replace(boxes=a["boxes"].tolist()), r"boxes")
            grid = (a["height"], a["width"]) if call.name == "cutmix_mask" else (
                (a["box_height"], a["box_width"]) if "box_height" in a else None)
            if call.name.startswith("box_mix"):
                shape = a["x"].shape[-2:] if "x" in a else a["grad_out"].shape[-2:]
                grid = tuple(shape)
            for column, value_fn in ((0, lambda t: -1), (1, lambda t: -(2**31)), (2, lambda t: grid[0] + 1),
                                     (3, lambda t: grid[1] + 1), (0, lambda t: int(t[2]) + 1),
                                     (1, lambda t: int(t[3]) + 1), (2, lambda t: 2**31 - 1)):
                def broken(column=column, value_fn=value_fn):
                    if batch == 0:
                        return None
                    boxes = a["boxes"].clone()
                    boxes[batch - 1, column] = value_fn(boxes[batch - 1])
                    return call.replace(boxes=boxes)
                add(f"box column {column}", broken, r"box", reads_values=True)
        elif param in ("inside_weight", "outside_weight"):
            name = param
            add(f"{name} int64", lambda p=param, v=value: call.replace(**{p: v.long()}), rf"{name} must be a float")
            add(f"{name} complex", lambda p=param, v=value: call.replace(**{p: v.to(torch.complex64)}),
                rf"{name} must be a float")
            add(f"{name} one row more", lambda p=param, v=value: call.replace(**{p: torch.cat([v, v.new_ones((1, v.shape[1]))])}),
                rf"{name} must have shape")
            add(f"{name} one column more", lambda p=param, v=value: call.replace(**{p: torch.cat([v, v[:, :1]], 1)}),
                rf"{name} must have shape|outside_weight must have shape|grad_out must have M")
            add(f"{name} requires grad", lambda p=param, v=value: call.replace(**{p: v.clone().requires_grad_()}),
                rf"{name} must not require grad")
            if "box_height" in a:
                add(f"{name} alone", lambda p=param: call.replace(**{p: None}), r"given together")
                add("M = 1", lambda: call.replace(inside_weight=a["inside_weight"][:, :1],
                                                  outside_weight=a["outside_weight"][:, :1]), r"M >= 2")
        else:
            add(f"{param} int64", lambda p=param, v=value: call.replace(**{p: v.long()}), rf"{name} must be a float")
            add(f"{param} bool", lambda p=param, v=value: call.replace(**{p: v.bool()}), rf"{name} must be a float")
            add(f"{param} complex", lambda p=param, v=value: call.replace(**{p: v.to(torch.complex64)}),
                rf"{name} must be a float")

    if call.name == "cutmix_boxes" and a["check_values"] and batch:
        for param, column, bad in (("lam", None, math.nan), ("lam", None, 1.5), ("lam", None, -1e-6),
                                   ("center", 0, 1.0), ("center", 1, -0.25), ("center", 1, math.nan),
                                   ("center", 0, math.inf)):
            def broken(param=param, column=column, bad=bad):
                t = a[param].clone()
                t[batch - 1] = bad if column is None else t[batch - 1]
                if column is not None:
                    t[batch - 1, column] = bad
                return call.replace(**{param: t})
            add(f"{param} value {bad}", broken, rf"{param} must lie in", reads_values=True)
    if call.name == "box_mix" and a["x"].shape[0] >= 2:
        add("x with M = 1", lambda: call.replace(x=a["x"][:1], inside_weight=a["inside_weight"][:, :1],
                                                 outside_weight=a["outside_weight"][:, :1]), r"M >= 2")
    for param in ("height", "width", "box_height", "box_width"):
        if param not in a:
            continue
        label = {"box_height": r"box_size\[0\]", "box_width": r"box_size\[1\]"}.get(param, param)
        for bad in (0, -1, -(2**40), 2**31, 2**62):
            add(f"{param} = {bad}", lambda p=param, bad=bad: call.replace(**{p: bad}),
                rf"{label} must be in \[1, 2147483647\]")
        add(f"{param} = 2.5", lambda p=param: call.replace(**{p: 2.5}), param)
    if "box_height" in a:
        features = a["features"] if "features" in a else None
        size = (features.shape[2], features.shape[3]) if features is not None else (
            (a["height"], a["width"]) if "height" in a else tuple(a["grad_out"].shape[-2:]))
        if size[0] > 1:
            add("box_height < height", lambda: call.replace(box_height=size[0] - 1), r"box_size must be at least")
        if size[1] > 1:
            add("box_width < width", lambda: call.replace(box_width=size[1] - 1), r"box_size must be at least")
        for bad in (math.nan, math.inf, -0.5, 1.0 + 1e-9, -1e-12):
            add(f"ratio = {bad}", lambda bad=bad: call.replace(ratio=bad), r"ratio must be in \[0, 1\]")
        num_channels = (a["features"] if "features" in a else a["grad_out"]).shape[-3 if "features" in a or
                                                                                  call.name == "cutmix_unmix_backward"
                                                                                  else -1]
        for bad in (-1, num_channels + 1, 2**40):
            add(f"channels = {bad}", lambda bad=bad: call.replace(channels=bad), r"channels must be in \[0, C\]")
    if call.name == "cutmix_unmix_backward":
        add("grad_out with M + 1", lambda: call.replace(grad_out=torch.cat([a["grad_out"], a["grad_out"][:1]])),
            r"grad_out must have M")
    if call.name == "cutmix_unmix_pool_backward":
        add("grad_out with M + 1", lambda: call.replace(grad_out=torch.cat([a["grad_out"], a["grad_out"][:1]])),
            r"grad_out must have M")
        add("height > box_height", lambda: call.replace(height=a["box_height"] + 1), r"box_size must be at least")
    if "normalize" in a:
        for bad in ("sum", "", "MEAN", "masked "):
            add(f"normalize = {bad!r}", lambda bad=bad: call.replace(normalize=bad), r"normalize must be")
    if "scale" in a:
        for bad in (math.nan, math.inf, -math.inf):
            add(f"scale = {bad}", lambda bad=bad: call.replace(scale=bad), r"scale must be finite")
        add("scale as a string", lambda: call.replace(scale="2"), r"scale")
    return out


def check_invalid(op, call: Call, label: str, pattern: str) -> None:
    try:
        result = op(*call.args)
    except ERRORS as error:
        message = str(error)
        assert re.search(pattern, message), f"{label}: message {message!r} does not match {pattern!r}"
        return
    shapes = [tuple(t.shape) for t in (result if isinstance(result, tuple) else (result,))]
    raise AssertionError(f"{label}: {call.name} returned {shapes} instead of raising")


# ------------------------------------------------------------------------ main


def swap_devices(call: Call) -> Call:
    """Every CPU tensor argument on meta and every meta one on CPU: the all-meta twin of a
    call, or (for a call with one argument on meta) the twin with one argument on CPU."""
    def swap(v):
        if not isinstance(v, torch.Tensor):
            return v
        return torch.zeros(v.shape, dtype=v.dtype) if v.device.type == "meta" else v.to("meta")
    return Call(call.name, [swap(v) for v in call.args], call.params)


def check_meta(op, call: Call) -> None:
    """The fake kernel: the shapes, dtypes and strides of the real kernel's output."""
    out, real = op(*swap_devices(call).args), op(*call.args)
    for o, r in zip(*(t if isinstance(t, tuple) else (t,) for t in (out, real))):
        assert o.device.type == "meta" and (o.shape, o.dtype) == (r.shape, r.dtype), (o, r)
        if r.numel() > 1:
            assert o.stride() == r.stride(), (o.stride(), r.stride())


def run(prefix: str, examples: int, names=OPS, meta: bool = False) -> None:
    """``meta``: every call on meta tensors, which the fake kernels answer (value checks excepted)."""
    dtypes = [torch.float32, torch.float64]
    if prefix == "":  # the interpreter's bfloat16 arithmetic is not Triton's
        dtypes += [torch.bfloat16, torch.float16]
    common = settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck), print_blob=False)
    for name in names:
        op = backends.op("triton" if prefix == "triton_" else "cpu", name)

        @common
        @given(valid_calls(name, dtypes))
        def valid(call):
            (check_meta if meta else check_valid)(op, call)

        @common
        @given(valid_calls(name, dtypes))
        def invalid(call):
            for label, make, pattern, reads_values in breakages(call):
                broken = None if meta and reads_values else make()
                if broken is not None:
                    check_invalid(op, swap_devices(broken) if meta else broken, label, pattern)

        valid()
        invalid()
        answer = "answered on meta as the kernels answer" if meta else "match the reference"
        print(f"{prefix}{name}: {examples} valid calls {answer}, every breakage of {examples} others refused",
              flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="", help='"" (compiled) or "triton_"')
    parser.add_argument("--examples", type=int, default=100, help="examples per operator, valid and invalid each")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--meta", action="store_true", help="call the fake kernels (meta tensors)")
    args = parser.parse_args(argv)
    import mixshare_ops  # noqa: F401  (registers the operators)

    run(args.prefix, args.examples, [n for n in args.ops.split(",") if n], meta=args.meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
