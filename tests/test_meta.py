"""Project rules checked as tests: every on-disk struct has a golden round trip, every CLI command and every
module is tested, and imports point one way (docs/design.md "Layers of the code")."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import construct
from construct import Construct

import nydus_py.format
from nydus_py.cli.main import cli
from nydus_py.cli.nydus_image import cli as image_cli
from tests.format.test_golden import GOLDEN_COVERAGE

PACKAGE = Path(nydus_py.format.__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def format_structs() -> set[str]:
    names = set()
    for module_info in pkgutil.iter_modules(nydus_py.format.__path__):
        module = importlib.import_module(f"nydus_py.format.{module_info.name}")
        for name, value in vars(module).items():
            imported = getattr(construct, name, None) is value
            if isinstance(value, Construct) and not imported and not name.startswith("_") and name[0].isupper():
                names.add(name)
    return names


def test_every_format_struct_has_a_golden_test() -> None:
    missing = format_structs() - set(GOLDEN_COVERAGE)
    assert not missing, f"structs without a golden round trip: {sorted(missing)}"


def test_every_cli_command_is_tested() -> None:
    tested = (TESTS / "test_cli.py").read_text()
    untested = [name for name in cli.commands if f'"{name}"' not in tested]
    assert not untested, f"commands missing from tests/test_cli.py: {untested}"
    drop_in = (TESTS / "test_drop_in_builder.py").read_text()
    untested = [name for name in image_cli.commands if f'"{name}"' not in drop_in]
    assert not untested, f"nydus-py-image commands missing from tests/test_drop_in_builder.py: {untested}"


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their own name)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("nydus_py", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        out[name] = path
    return out


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "nydus_py":  # `from nydus_py import x`: the submodule x
                found.update(f"nydus_py.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "nydus_py" or name.startswith("nydus_py.")}


def part(module: str) -> str:
    """The layer a module belongs to: its first component below nydus_py (`format`, `build`, `model`, ...)."""
    return module.split(".")[1] if "." in module else "nydus_py"


# Each layer and the layers it may import (docs/design.md "Layers of the code"): dependencies point down only.
_BASE = {"errors"}
_CORE = _BASE | {"format", "model", "image", "util"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "model": set(),
    "format": _BASE,
    "util": _BASE,
    "image": _BASE | {"format", "model"},
    "sources": _CORE,
    "blob": _CORE,
    "bootstrap": _CORE,
    # build and read never import each other: what both need lives in format/, model, image, blob/, bootstrap/
    "build": _CORE | {"sources", "blob", "bootstrap"},
    "read": _CORE | {"blob", "bootstrap"},
    "oci": _CORE | {"sources", "blob", "bootstrap", "build", "read"},
    "service": _CORE | {"sources", "blob", "bootstrap", "build", "read", "oci"},
    "cli": _CORE | {"sources", "blob", "bootstrap", "build", "read", "oci", "service"},
    "nydus_py": set(),  # the package's __init__ loads its exports lazily (importlib), never by an import
}


def test_import_direction() -> None:
    problems = []
    for module, path in modules().items():
        layer = part(module)
        assert layer in ALLOWED, f"{module}: a new top-level module or folder needs its place in ALLOWED"
        for name in imports_of(path):
            target = part(name)
            if target != layer and target not in ALLOWED[layer]:
                problems.append(f"{module} imports {name}")
    assert not problems, problems


def test_at_most_eight_loose_modules() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= 8, loose


def test_image_references_are_parsed_in_one_place() -> None:
    """`oci:`/`docker://` references are parsed by nydus_py/oci/ref.py only: nobody re-parses strings."""
    offenders = [str(p) for p in PACKAGE.rglob("*.py") if p.name != "ref.py"
                 and re.search(r"startswith\(\(?\"(oci|oci-archive|docker-archive|docker):", p.read_text())]
    assert not offenders


def test_no_printing_outside_cli() -> None:
    offenders = [str(p) for p in PACKAGE.rglob("*.py")
                 if "cli" not in p.relative_to(PACKAGE).parts[:1]
                 and re.search(r"(?<![\w.])print\(|click\.echo", p.read_text())]
    assert not offenders


def test_nothing_points_outside_the_repository() -> None:
    """The repository stands alone: no file refers the reader to a sibling folder of the checkout."""
    root = PACKAGE.parent
    offenders = []
    for path in [*root.glob("*.md"), *(root / "docs").rglob("*.md"), *(root / "fixtures").rglob("*.md"),
                 *root.glob("pyproject.toml"), *PACKAGE.rglob("*.py"), *TESTS.rglob("*.py"),
                 *(root / "tools").rglob("*.py"), *(root / "tools").rglob("*.sh")]:
        if "../" + "shared" in path.read_text(errors="replace"):
            offenders.append(str(path.relative_to(root)))
    assert not offenders


# Modules whose tests live in a file named for what they do rather than after the module, and why.
COVERED_ELSEWHERE = {
    "nydus_py": "the lazy exports are used by tests/conftest.py and tests/test_reader.py",
    "nydus_py.errors": "four exception classes; every test of an error path raises them",
    "nydus_py.image": "decoded bootstrap types: tests/test_reader.py reads them from real nydus-image bootstraps",
    "nydus_py.format": "parse/build wrappers: tests/format/test_golden.py and the corrupt-input cases",
    "nydus_py.format._fields": "IntEnumField and FastStruct: tests/format/test_golden.py proves fast and construct paths agree",
    "nydus_py.format.blobmeta": "tests/format/test_golden.py (every Struct)",
    "nydus_py.format.erofs": "tests/format/test_golden.py (every Struct)",
    "nydus_py.format.oci": "constants only; tests/test_oci.py checks what is written with them",
    "nydus_py.format.posix_acl": "tests/format/test_golden.py and tests/test_layers.py (ACL xattrs)",
    "nydus_py.format.rafs": "tests/format/test_golden.py (every Struct)",
    "nydus_py.format.tar": "tests/format/test_golden.py (tar headers); tests/test_oci.py (bootstrap layer tar)",
    "nydus_py.util": "package",
    "nydus_py.util.fsutil": "atomic_output and file_sha256: every output test (tests/test_build_errors.py)",
    "nydus_py.util.gcpause": "tests/test_build.py builds with the collector paused and compares bytes",
    "nydus_py.sources": "the option enums; tests/test_overlay.py and tests/test_tar_layers.py use every value",
    "nydus_py.sources.directory": "tests/test_layers.py (directory and overlayfs layers), tests/test_overlay.py",
    "nydus_py.sources.tarball": "tests/test_tar_layers.py, tests/test_conformance_layers.py",
    "nydus_py.sources.gzipref": "tests/test_zran.py (the drop-in's --type targz-ref opens one)",
    "nydus_py.sources.chunklist": "tests/test_chunkdict.py (nydus-py chunkdict builds its layers from one)",
    "nydus_py.sources.layer": "tests/test_cli.py (directories, tars, '-') and tests/test_drop_in_builder.py",
    "nydus_py.blob": "package",
    "nydus_py.blob.chunker": "tests/test_build.py (dedup, holes, --jobs give the same bytes)",
    "nydus_py.blob.digests": "tests/test_reader.py verifies real nydus-image chunk digests with it",
    "nydus_py.blob.writer": "tests/test_build.py and tests/test_nydus_stack.py (nydus-image check of our blobs)",
    "nydus_py.blob.device": "tests/test_reader.py (device image of a real blob) and tests/test_fixture_mount.py",
    "nydus_py.bootstrap": "package",
    "nydus_py.bootstrap.layout": "tests/test_bootstrap.py",
    "nydus_py.bootstrap.writer": "tests/test_bootstrap.py",
    "nydus_py.bootstrap.reader": "tests/test_reader.py (real nydus-image bootstraps)",
    "nydus_py.build": "package",
    "nydus_py.build.config": "tests/test_cli.py (the BuildConfig each option makes)",
    "nydus_py.build.pipeline": "tests/test_build.py, tests/test_build_errors.py",
    "nydus_py.build.plan": "tests/test_model.py (device table order) and tests/test_layers.py",
    "nydus_py.build.merge": "tests/test_layers.py (nydus-py merge) and tests/test_drop_in_builder.py (the drop-in's)",
    "nydus_py.read": "package",
    "nydus_py.read.locate": "tests/test_read_side.py (bootstraps, blobs, output directories)",
    "nydus_py.read.unpack": "tests/test_read_side.py (directories and tars, compared with the source)",
    "nydus_py.read.mount": "tests/test_read_side.py (kernel mounts through the device cache)",
    "nydus_py.read.kmount": "tests/test_fixture_mount.py",
    "nydus_py.oci": "package",
    "nydus_py.oci.documents": "tests/test_oci_trust.py (malformed documents of every kind)",
    "nydus_py.oci.package": "tests/test_oci.py (manifest, config, bootstrap layer)",
    "nydus_py.oci.publish": "tests/test_oci.py (build into a layout), tests/test_build_errors.py",
    "nydus_py.oci.convert": "tests/test_conformance_oci.py, tests/test_oci.py",
    "nydus_py.oci.copy": "tests/test_registry.py (layout <-> registry copies)",
    "nydus_py.oci.nydus": "tests/test_read_side.py and tests/test_oci.py (check of layouts)",
    "nydus_py.oci.platforms": "tests/test_oci.py (platform selection)",
    "nydus_py.cli.service": "tests/test_cli.py (their options) and the service tests, which start both commands",
    "nydus_py.service.events": "tests/test_service_api.py (every shape, skip rule and refusal, over HTTP)",
    "nydus_py.service.options": "tests/test_cli.py (options and --config refused) and tests/test_service_api.py",
    "nydus_py.service.queue": "tests/test_service_tasks.py (the embedded mode, restarted with conversions queued)",
    "nydus_py.service.store": "tests/test_service_tasks.py (Redis) and tests/test_service_api.py (SQLite)",
    "nydus_py.service.serve": "every service test starts `nydus-py serve`; tests/test_service_tasks.py restarts it",
    "nydus_py.cli": "package",
    "nydus_py.cli.__main__": "`python3 -m nydus_py.cli` runs in tests/test_cli.py",
    "nydus_py.cli.interrupt": "SIGTERM and SIGINT mid-build: tests/test_faults.py and tests/test_drop_in_trust.py",
    "nydus_py.cli.main": "tests/test_cli.py",
    "nydus_py.cli.nydus_image": "tests/test_drop_in_builder.py",
    "nydus_py.cli.progress": "tests/test_cli.py (drawn on a pseudo-terminal)",
}


def test_every_module_has_tests() -> None:
    """A module is tested in tests/test_<module>.py or tests/test_<folder>_<module>.py, or says where."""
    files = {p.stem for p in TESTS.rglob("test_*.py")}
    missing = []
    for module in modules():
        parts = module.split(".")[1:]
        named = {f"test_{parts[-1]}", f"test_{'_'.join(parts)}"} if parts else set()
        if not named & files and module not in COVERED_ELSEWHERE:
            missing.append(module)
    stale = sorted(set(COVERED_ELSEWHERE) - set(modules()))
    assert not missing, f"modules without tests/test_<module>.py or a reason in COVERED_ELSEWHERE: {missing}"
    assert not stale, f"COVERED_ELSEWHERE names modules that do not exist: {stale}"
