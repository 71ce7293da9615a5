"""Which package may import which: the tests import the code, never the reverse, and the operator
library stands alone (an AST scan of every import statement, lazy ones inside functions included)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the top-level packages of this repository it must not import
FORBIDDEN = {
    "mixshare_ops": ("tests", "benchmarks", "mixshare"),
    "mixshare": ("tests", "benchmarks"),
    "benchmarks": ("tests",),
}


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``; relative imports are left out
    (they stay inside their package)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path.read_text()):
            if module.split(".")[0] in forbidden:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return out


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_package_imports_nothing_it_must_not(package):
    assert (ROOT / package).is_dir()
    assert violations(package, FORBIDDEN[package]) == []


def test_the_scan_sees_every_kind_of_import():
    source = "import tests.cases\nfrom tests import cases\ndef f():\n    from benchmarks.cases import x\nfrom . import y\n"
    assert imported_modules(source) == [(1, "tests.cases"), (2, "tests"), (4, "benchmarks.cases")]
