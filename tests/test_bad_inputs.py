"""The bad-input corpus (fixtures/bad_inputs.py): every case ends in its one-line error (exit 2, nothing left in
OUTDIR, no traceback) or builds exactly the tree it should."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fixtures.bad_inputs import CASES, Case
from nydus_py.bootstrap.reader import read_bootstrap
from nydus_py.cli.main import main


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    args = case.make(tmp_path / "in")
    out = tmp_path / "out"
    status = main(["build", *args, "-o", str(out), "--jobs", "1"])
    err = capsys.readouterr().err
    if case.error is not None:
        assert status == 2, f"expected an error, got exit {status}: {err}"
        assert err.count("\n") == 1 and err.startswith("nydus-py: ") and "Traceback" not in err, err
        assert case.error in err, err
        assert not out.exists()
        return
    assert status == 0, err
    tree = read_bootstrap((out / "bootstrap").read_bytes()).tree
    assert case.check is not None and case.check(tree)
    assert main(["check", str(out)]) == 0
    if case.name != "directory with 100k entries":  # unpack works too (the 100k case only costs time)
        assert main(["unpack", str(out), "-o", str(tmp_path / "unpacked")]) == 0, capsys.readouterr().err
        # rm, not pytest's recursive rmtree, which cannot remove a 10k-deep tree
        subprocess.run(["rm", "-rf", str(tmp_path / "unpacked")], check=True)


def test_corpus_size() -> None:
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


def test_fuzz_pipeline_briefly() -> None:
    """tools/fuzz.py for a few hundred generated layers (it runs for as long as asked; here a fixed seed)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    done = subprocess.run([sys.executable, str(ROOT / "tools" / "fuzz.py"), "--seconds", "120", "--examples", "300",
                           "--seed", "2026"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "300 cases" in done.stdout and "0 failures" in done.stdout
