"""Packaging: one list of run-time requirements, and a demo that installs only it."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _names(path):
    """Requirement lines of a requirements file, without comments and -r includes."""
    lines = [line.split("#", 1)[0].strip() for line in (ROOT / path).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("-r")]


def test_setup_declares_requirements_txt():
    """setup.py's install_requires is read from requirements.txt, and the
    development list includes it rather than repeating it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    (requires,) = [kw.value for kw in call.keywords if kw.arg == "install_requires"]
    assert isinstance(requires, ast.Name) and requires.id == "RUNTIME_REQUIREMENTS"
    namespace = {}
    source = (ROOT / "setup.py").read_text()
    start = source.index("def runtime_requirements")
    end = source.index("RUNTIME_REQUIREMENTS = ")
    exec(compile("import os\nHERE = " + repr(str(ROOT)) + "\n" + source[start:end], "setup.py", "exec"), namespace)
    assert namespace["runtime_requirements"]() == _names("requirements.txt")
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert not set(_names("requirements.txt")) & set(_names("requirements-dev.txt"))
    assert "torch" not in _names("requirements.txt") + _names("requirements-dev.txt")  # installed first, never replaced
    for dev_only in ("triton", "pytest", "hypothesis", "tensorboard"):
        assert dev_only in _names("requirements-dev.txt") and dev_only not in _names("requirements.txt")


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_demo_installs_only_runtime_requirements(tmp_path):
    """`make demo` on a fresh machine installs requirements.txt, never the
    development list; `make test` installs both."""
    def commands(target):
        proc = subprocess.run(["make", "-n", "-B", target, f"PYTHON={sys.executable}", f"VENV={tmp_path / 'venv'}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    demo, test = commands("demo"), commands("test")
    assert "-r requirements.txt" in demo and "requirements-dev.txt" not in demo and "mixshare compare" in demo
    assert "-r requirements.txt" in test and "-r requirements-dev.txt" in test and "pytest" in test
