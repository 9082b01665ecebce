"""The CLI: every command, its output and its exit statuses (0 done, 2 could not run, 3 our bug)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nydus_py.cli.main import main
from tests.conftest import V1_BOOT, V2_BLOB


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_inspect_text(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "inspect", str(V1_BOOT))
    assert status == 0 and err == ""
    assert "flags:       0x194 (HASH_BLAKE3, EXPLICIT_UID_GID, COMPRESSION_ZSTD, INLINED_CHUNK_DIGEST)" in out
    assert "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef" in out
    assert "-rw-r--r--    1      0      0      16931 2023-02-19 15:12:33.628661334 /lib.rs" in out


def test_inspect_json_of_inline_blob(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "inspect", "--json", str(V2_BLOB), "/lib.rs")
    doc = json.loads(out)
    assert status == 0
    assert doc["blobs"][0]["chunk_count"] == 3 and doc["chunk_size"] == 1 << 20
    assert len(doc["listing"]) == 1 and doc["listing"][0].endswith(" /lib.rs")


@pytest.mark.parametrize("content", [b"", b"not an image at all" * 100])
def test_inspect_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              content: bytes) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(content)
    status, out, err = run(capsys, "inspect", str(bad))
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("nydus-py: ") and "Traceback" not in err


def test_inspect_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "inspect", str(tmp_path / "missing"))
    assert status == 2 and "no such file" in err


def test_unexpected_exception_is_exit_3(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def boom(*_: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("nydus_py.oci.nydus.open_first_image", boom)
    status, _, err = run(capsys, "inspect", "x")
    assert status == 3 and err.startswith("nydus-py: internal error") and err.count("\n") == 1


def test_console_script_runs() -> None:
    done = subprocess.run([sys.executable, "-m", "nydus_py.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "inspect" in done.stdout


def test_build_passes_the_exact_config(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    from nydus_py.build.config import BuildConfig, Compressor, Digester

    seen = {}

    def fake_build(layers, target, config, *, extra_bootstrap=None, image=None, registry=None):  # type: ignore[no-untyped-def]
        seen.update(source=layers, outdir=target.path, config=config, extra=extra_bootstrap)
        raise SystemExit(0)

    monkeypatch.setattr("nydus_py.oci.publish.build_image", fake_build)
    with pytest.raises(SystemExit):
        main(["build", "src", "-o", "out", "--compressor", "lz4_block", "--digester", "sha256", "--chunk-size",
              "0x10000", "--jobs", "3", "--bootstrap", str(tmp_path / "b.boot")])
    assert seen["config"] == BuildConfig(compressor=Compressor.LZ4_BLOCK, digester=Digester.SHA256,
                                         chunk_size=0x10000, jobs=3)
    assert (seen["source"], seen["outdir"]) == (["src"], Path("out")) and callable(seen["extra"])  # --bootstrap's


def test_build_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"alpha" * 1000)
    status, out, err = run(capsys, "build", str(src), "-o", str(tmp_path / "out"), "--output-json",
                           str(tmp_path / "r.json"))
    assert status == 0 and err == ""
    assert out.startswith(f"bootstrap {tmp_path / 'out' / 'bootstrap'}")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["counts"]["files"] == 1 and len(doc["blobs"]) == 1
    status, out, _ = run(capsys, "inspect", str(tmp_path / "out"))
    assert status == 0 and out.rstrip().endswith(" /a")


def test_merge_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blobs = []
    for i, content in enumerate((b"lower", b"upper")):
        src = tmp_path / f"src{i}"
        src.mkdir()
        (src / "f").write_bytes(content * 100)
        status, _, _ = run(capsys, "build", str(src), "-o", str(tmp_path / f"out{i}"), "--output-json",
                           str(tmp_path / f"out{i}.json"))
        assert status == 0
        blobs += [layer["path"] for layer in json.loads((tmp_path / f"out{i}.json").read_text())["layers"]]
    status, out, err = run(capsys, "merge", *blobs, "-o", str(tmp_path / "merged"), "--no-prefetch")
    assert status == 0 and err == "" and out.startswith("bootstrap ")
    assert "not referenced" in out  # the lower layer's only file was replaced
    status, _, err = run(capsys, "merge", str(tmp_path / "missing"), "-o", str(tmp_path / "m2"))
    assert status == 2 and "missing" in err and not (tmp_path / "m2").exists()


def test_check_unpack_mount_umount_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, _ = run(capsys, "check", str(V1_BOOT))
    assert status == 0 and out.rstrip().endswith("(3 inodes, 1 blobs, 2 chunks verified)")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"")
    status, _, err = run(capsys, "unpack", str(V1_BOOT), "-o", str(tmp_path / "full"))
    assert status == 2 and "not an empty directory" in err
    status, _, err = run(capsys, "mount", str(V1_BOOT), str(tmp_path / "no-such-dir"))
    assert status == 2 and "not a directory" in err
    status, _, err = run(capsys, "umount", str(tmp_path))
    assert status == 2 and err.startswith("nydus-py: umount") and err.count("\n") == 1


def test_convert_options_and_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                    tmp_path: Path) -> None:
    from nydus_py.oci.convert import ConvertOptions

    seen = {}

    def fake_convert(source, target, config, opts, registry):  # type: ignore[no-untyped-def]
        seen.update(source=source, target=target, config=config, opts=opts, registry=registry)
        raise SystemExit(0)

    monkeypatch.setattr("nydus_py.oci.convert.convert", fake_convert)
    with pytest.raises(SystemExit):
        main(["convert", "oci-archive:img.tar", "oci:out:app", "--platform", "linux/arm64", "--merge-platform",
              "--compressor", "lz4_block"])
    assert seen["opts"] == ConvertOptions(platforms=("linux/arm64",), docker_types=False, merge_platform=True)
    assert seen["config"].compressor.value == "lz4_block" and str(seen["target"]) == "oci:out:app"
    assert seen["target"].path == Path("out") and seen["target"].tag == "app"
    assert seen["registry"].plain_http is False and seen["registry"].creds is None
    monkeypatch.undo()
    status, _, err = run(capsys, "convert", "registry.example/x", f"oci:{tmp_path / 'o'}")
    assert status == 2 and "oci:DIR" in err
    status, _, err = run(capsys, "convert", f"oci:{tmp_path / 'missing'}", f"oci:{tmp_path / 'o'}")
    assert status == 2 and "not an OCI image layout" in err and not (tmp_path / "o").exists()


def test_copy_between_layouts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"copy me")
    assert main(["build", str(src), "-o", str(tmp_path / "a"), "--tag", "t"]) == 0
    capsys.readouterr()
    status, out, _ = run(capsys, "copy", f"oci:{tmp_path / 'a'}:t", f"oci:{tmp_path / 'b'}:u")
    index_a = json.loads((tmp_path / "a" / "index.json").read_text())["manifests"][0]["digest"]
    assert status == 0 and out.rstrip().endswith(index_a)
    assert json.loads((tmp_path / "b" / "index.json").read_text())["manifests"][0]["digest"] == index_a
    status, _, err = run(capsys, "copy", "somewhere", f"oci:{tmp_path / 'c'}")
    assert status == 2 and "not an image reference" in err


def test_chunkdict_output_and_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`chunkdict`'s summary names each image; what it is not given is one line, exit 2."""
    for name, extra in (("a", b"only in a" * 999), ("b", b"only in b" * 999)):
        tree = tmp_path / f"tree-{name}"
        tree.mkdir()
        (tree / "shared").write_bytes(b"in both images\n" * 5000)
        (tree / "own").write_bytes(extra)
        assert run(capsys, "build", str(tree), "-o", str(tmp_path / name), "-q")[0] == 0
    status, out, err = run(capsys, "chunkdict", f"oci:{tmp_path / 'a'}", f"oci:{tmp_path / 'b'}", "-o",
                           f"oci:{tmp_path / 'dict'}:d")
    assert status == 0 and err == ""
    assert out.splitlines()[0] == "chunk dictionary: 1 chunk (75000 bytes) in 1 blob"
    assert f"oci:{tmp_path / 'a'} (linux/" in out and f"oci:{tmp_path / 'dict'}:d: application/" in out
    status, _, err = run(capsys, "chunkdict", str(tmp_path / "tree-a"), "-o", f"oci:{tmp_path / 'd2'}")
    assert status == 2 and err.count("\n") == 1 and not (tmp_path / "d2").exists()
    status, _, err = run(capsys, "chunkdict", f"oci:{tmp_path / 'a'}", "-o", f"oci:{tmp_path / 'd3'}",
                         "--max-blob-size", "lots")
    assert status == 2 and "'lots' is not a size" in err


def test_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    import os as _os
    import pty

    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"f{i}").write_bytes(b"x" * 100000)
    outputs = {}
    for name, extra in (("tty", []), ("quiet", ["--quiet"])):
        master, slave = pty.openpty()
        done = subprocess.run([sys.executable, "-m", "nydus_py.cli", "build", str(src), "-o", str(tmp_path / name),
                               *extra], stderr=slave, stdout=subprocess.DEVNULL, timeout=60)
        _os.close(slave)
        chunks = []
        while True:
            try:
                data = _os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        _os.close(master)
        assert done.returncode == 0
        outputs[name] = b"".join(chunks)
    assert b"files, " in outputs["tty"] and b"MiB/s" in outputs["tty"] and b"ETA" in outputs["tty"]
    assert outputs["quiet"] == b""
    piped = subprocess.run([sys.executable, "-m", "nydus_py.cli", "build", str(src), "-o", str(tmp_path / "p")],
                           capture_output=True, timeout=60)
    assert piped.stderr == b""  # not a terminal: no progress


@pytest.mark.parametrize("args, says", [
    (["serve", "--listen", "nowhere"], "--listen 'nowhere': HOST:PORT"),
    (["serve", "--tag-suffix", "a/b", "--listen", "127.0.0.1:1"], "tag suffix 'a/b'"),
    (["serve", "--chunk-size", "3", "--listen", "127.0.0.1:1"], "chunk size"),
    (["serve", "--oci-ref", "--listen", "127.0.0.1:1"], "--oci-ref needs --digester sha256"),
    (["worker", "--broker", "amqp://127.0.0.1/"], "redis://HOST:PORT/DB"),
    (["worker", "--config", "CONFIG"], "CONFIG: "),
], ids=["listen", "suffix", "chunk-size", "oci-ref", "broker", "config"])
def test_service_commands_refuse_bad_options_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         args: list[str], says: str) -> None:
    """serve and worker check their options (and --config's keys) before they start anything."""
    config = tmp_path / "service.toml"
    config.write_text('broker = "redis://127.0.0.1:1/0"\nno_such_key = 1\n')
    args = [str(config) if a == "CONFIG" else a for a in args]
    status, out, err = run(capsys, *args, "--state-dir", str(tmp_path / "state"))
    says = says.replace("CONFIG", str(config))
    assert status == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "state").exists()
