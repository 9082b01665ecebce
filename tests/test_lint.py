"""ruff on the package and mypy (strict on format/, model.py, pipeline.py, the read side and the typed OCI
edge) run as tests, so CI's one pytest command runs them too (pyproject.toml holds their settings)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STRICT = ["nydus_py/format", "nydus_py/model.py", "nydus_py/pipeline.py", "nydus_py/outdir.py", "nydus_py/oci/ref.py",
          "nydus_py/oci/documents.py", "nydus_py/errors.py", "nydus_py/config.py", "nydus_py/fsutil.py",
          "nydus_py/image.py", "nydus_py/overlay.py", "nydus_py/merge.py", "nydus_py/validate.py", "nydus_py/check.py",
          "nydus_py/locate.py", "nydus_py/devices.py", "nydus_py/kmount.py", "nydus_py/blob/reader.py",
          "nydus_py/blob/device.py", "nydus_py/bootstrap/reader.py"]


def _tool(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed: pip install -e '.[test]'")


def test_ruff() -> None:
    _tool("ruff")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "nydus_py"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_core() -> None:
    _tool("mypy")
    done = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", *STRICT], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
