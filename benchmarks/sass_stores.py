"""Global load and store widths per kernel in the SASS of compiled CUDA objects.

``python -m benchmarks.sass_stores OBJ_OR_DIR... [--json]`` runs
``cuobjdump --dump-sass`` on each object (``*.o`` anywhere under a directory), counts the
global (and generic) load and store instructions of each kernel by access
width (``STG.E.128``, ``STG.E.U16``, ``LDG.E``, ...; other modifiers such as
``.CONSTANT`` are dropped), prints one table per kernel and lists the
regressions: vector-path kernels that store with anything but ``STG.E.128``.
Exits with 1 if there are regressions. Needs no GPU.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib.util
import json
import pathlib
import re
import shutil
import subprocess
import sys

# Kernels whose vector path (VEC > 1) stores each chunk of 16 bytes with one
# store (cuda::store_vec): csrc/cuda/box_mix.cu, cutmix_unmix.cu,
# cutmix_unmix_pool.cu (backward) and cutmix_boxes.cu (cutmix_mask). The pool
# forward kernels have a VEC too but store scalar results.
VECTOR_STORE_KERNELS = (
    "box_mix_kernel",
    "box_mix_backward_kernel",
    "cutmix_unmix_kernel",
    "cutmix_unmix_backward_kernel",
    "pool_backward_kernel",
    "cutmix_mask_kernel",
)
WIDE_STORE = "STG.E.128"

_WIDTHS = {"U8", "S8", "U16", "S16", "64", "128", "256"}
_MEMORY_OPS = {"STG": "store", "ST": "store", "LDG": "load", "LD": "load"}
_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
# "/*0120*/   @!P0 STG.E.128 desc[UR4][R2.64], R4 ;"
_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")


@dataclasses.dataclass
class Kernel:
    """One kernel of a dump: its names and its load/store counts by width."""

    mangled: str
    name: str  # demangled if c++filt was found, else the mangled name
    stores: dict[str, int] = dataclasses.field(default_factory=dict)
    loads: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def base_name(self) -> str:
        """Unqualified function name without template arguments."""
        return _parts(self.mangled, self.name)[0]

    @property
    def short_name(self) -> str:
        """Base name with the template arguments as written, e.g. ``box_mix_kernel<float, 4>``."""
        base, args, _ = _parts(self.mangled, self.name)
        return f"{base}<{', '.join(args)}>" if args else base

    @property
    def vec(self) -> int | None:
        """First integer template argument (the chunk width VEC of the vector kernels), if any."""
        ints = _parts(self.mangled, self.name)[2]
        return ints[0] if ints else None


def find_cuobjdump() -> str | None:
    """cuobjdump on PATH, else the one shipped in triton's backends/nvidia/bin, else None."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    spec = importlib.util.find_spec("triton")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = pathlib.Path(location) / "backends" / "nvidia" / "bin" / "cuobjdump"
        if candidate.is_file():
            return str(candidate)
    return None


def access_key(opcode: str) -> tuple[str, str] | None:
    """("store" or "load", key such as "STG.E.128") of a global/generic access opcode, else None."""
    parts = opcode.split(".")
    kind = _MEMORY_OPS.get(parts[0])
    if kind is None:
        return None
    widths = [p for p in parts[1:] if p in _WIDTHS]
    key = ".".join([parts[0], *(["E"] if "E" in parts[1:] else []), *widths[:1]])
    return kind, key


def parse_sass(text: str) -> list[Kernel]:
    """Kernels of one ``cuobjdump --dump-sass`` output, in order, with their counts."""
    kernels: list[Kernel] = []
    stores: collections.Counter = collections.Counter()
    loads: collections.Counter = collections.Counter()
    for line in text.splitlines():
        function = _FUNCTION.match(line)
        if function:
            stores, loads = collections.Counter(), collections.Counter()
            kernels.append(Kernel(function.group(1), function.group(1), stores, loads))
            continue
        instruction = _INSTRUCTION.match(line)
        if instruction and kernels:
            access = access_key(instruction.group(1))
            if access:
                (stores if access[0] == "store" else loads)[access[1]] += 1
    for kernel in kernels:
        kernel.stores, kernel.loads = dict(sorted(kernel.stores.items())), dict(sorted(kernel.loads.items()))
    names = demangle([k.mangled for k in kernels])
    for kernel, name in zip(kernels, names):
        kernel.name = name
    return kernels


def demangle(names: list[str]) -> list[str]:
    """Names demangled by c++filt, or unchanged if it is absent or fails."""
    tool = shutil.which("c++filt")
    if not tool or not names:
        return list(names)
    run = subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True, text=True)
    out = run.stdout.splitlines()
    return out if run.returncode == 0 and len(out) == len(names) else list(names)


def dump_objects(paths: list[pathlib.Path], cuobjdump: str | None = None) -> dict[str, list[Kernel]]:
    """``{object path: kernels}`` for the given objects; for a directory, every ``*.o`` under it
    that holds device code (host-only objects of a mixed build are passed over)."""
    tool = cuobjdump or find_cuobjdump()
    if tool is None:
        raise FileNotFoundError("cuobjdump not found (not on PATH, not in the triton package)")
    result = {}
    for path in paths:
        scanned = path.is_dir()
        for obj in sorted(path.rglob("*.o")) if scanned else [path]:
            run = subprocess.run([tool, "--dump-sass", str(obj)], capture_output=True, text=True)
            if run.returncode != 0:
                if scanned:
                    continue
                raise RuntimeError(f"cuobjdump --dump-sass {obj} failed: {run.stderr.strip()[-500:]}")
            result[str(obj)] = parse_sass(run.stdout)
    return result


def regressions(kernels: list[Kernel], names: tuple[str, ...] = VECTOR_STORE_KERNELS) -> list[Kernel]:
    """Vector instantiations (VEC > 1) of the kernels `names` whose stores are not all ``STG.E.128``."""
    return [
        k for k in kernels
        if k.base_name in names and (k.vec or 1) > 1 and (set(k.stores) != {WIDE_STORE})
    ]


def format_table(kernels: list[Kernel]) -> str:
    """One row per kernel: its short name, store counts and load counts by width."""
    def counts(c: dict[str, int]) -> str:
        return " ".join(f"{k}:{n}" for k, n in c.items()) or "-"

    rows = [("kernel", "stores", "loads")] + [(k.short_name, counts(k.stores), counts(k.loads)) for k in kernels]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}".rstrip() for r in rows)


def _parts(mangled: str, name: str) -> tuple[str, list[str], list[int]]:
    """(base name, template arguments, integer template arguments) of a kernel."""
    if name != mangled:  # demangled: "void ns::(anonymous namespace)::f<float, 4, (E)1>(params)"
        head = name[: _matching_open(name, len(name) - 1, "(", ")")] if name.endswith(")") else name
        args: list[str] = []
        if head.endswith(">"):
            open_at = _matching_open(head, len(head) - 1, "<", ">")
            args = _split_template_args(head[open_at + 1 : -1])
            head = head[:open_at]
        base = head.rsplit("::", 1)[-1].split()[-1] if head.strip() else name
        return base, args, [int(a) for a in args if re.fullmatch(r"-?\d+", a)]
    # Mangled (Itanium): _ZN<len><id>...<len><id>I<template args>E...; only
    # the integer literals (Li<n>E) of the arguments are recovered.
    base, rest = _last_nested_component(mangled)
    if not rest.startswith("I"):
        return base, [], []
    ints = [int(f"-{n}" if neg else n) for neg, n in re.findall(r"Li(n?)(\d+)E", rest)]
    return base, [str(i) for i in ints], ints


def _last_nested_component(mangled: str) -> tuple[str, str]:
    pos = 3 if mangled.startswith("_ZN") else 2 if mangled.startswith("_Z") else 0
    base = mangled
    while pos < len(mangled) and mangled[pos].isdigit():
        digits = re.match(r"\d+", mangled[pos:]).group(0)
        pos += len(digits)
        base = mangled[pos : pos + int(digits)]
        pos += int(digits)
    return base, mangled[pos:]


def _matching_open(text: str, close_at: int, opening: str, closing: str) -> int:
    depth = 0
    for i in range(close_at, -1, -1):
        depth += {closing: 1, opening: -1}.get(text[i], 0)
        if depth == 0:
            return i
    return 0


def _split_template_args(text: str) -> list[str]:
    args, depth, current = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            args.append(current.strip())
            current = ""
            continue
        depth += {"<": 1, "(": 1, ">": -1, ")": -1}.get(ch, 0)
        current += ch
    return [*args, current.strip()] if current.strip() else args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=pathlib.Path, help="object files or directories of *.o")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    dumps = dump_objects(args.paths)
    bad = [k for kernels in dumps.values() for k in regressions(kernels)]
    if args.json:
        payload = {
            "objects": {obj: [dataclasses.asdict(k) for k in kernels] for obj, kernels in dumps.items()},
            "regressions": [k.name for k in bad],
        }
        print(json.dumps(payload, indent=1))
    else:
        for obj, kernels in dumps.items():
            print(f"== {obj}")
            print(format_table(kernels))
        print(f"regressions ({len(bad)}): vector kernels with stores other than {WIDE_STORE}")
        for kernel in bad:
            print(f"  {kernel.short_name}: {kernel.stores}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
