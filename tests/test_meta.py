"""Project rules checked as tests: every on-disk struct has a golden round trip, every CLI command is
tested, and imports point the way ../shared/STYLE.md §3.1 says."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import construct
from construct import Construct

import nydus_py.format
from nydus_py.cli import cli
from tests.format.test_golden import GOLDEN_COVERAGE

PACKAGE = Path(nydus_py.format.__file__).resolve().parent.parent


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
    tested = (Path(__file__).parent / "test_cli.py").read_text()
    untested = [name for name in cli.commands if f'"{name}"' not in tested]
    assert not untested, f"commands missing from tests/test_cli.py: {untested}"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("nydus_py")}


# module prefix -> package modules it must not import
FORBIDDEN = {
    "nydus_py.format": ("nydus_py.model", "nydus_py.bootstrap", "nydus_py.blob", "nydus_py.cli", "nydus_py.sources",
                        "nydus_py.image"),
    "nydus_py.model": ("nydus_py.",),
}


def test_import_direction() -> None:
    problems = []
    for path in PACKAGE.rglob("*.py"):
        module = "nydus_py." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        imported = imports_of(path)
        if module != "nydus_py.cli" and "nydus_py.cli" in imported:
            problems.append(f"{module} imports nydus_py.cli")
        for prefix, forbidden in FORBIDDEN.items():
            if module == prefix or module.startswith(prefix + "."):
                problems += [f"{module} imports {name}" for name in imported
                             if any(name == f or name.startswith(f) for f in forbidden) and name != module
                             and not name.startswith(prefix)]
    assert not problems, problems


def test_core_never_imports_the_oci_layer() -> None:
    """The core (format, model, sources, chunker, blob, bootstrap, merge, pipeline, read side) knows no OCI:
    only nydus_py.oci itself and the command line import it (../shared/DESIGN.md "Layers of the code")."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        module = "nydus_py." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if module.startswith("nydus_py.oci.") or module == "nydus_py.cli":
            continue
        offenders += [f"{module} imports {name}" for name in imports_of(path)
                      if name == "nydus_py.oci" or name.startswith("nydus_py.oci.")]
    assert not offenders, offenders


def test_image_references_are_parsed_in_one_place() -> None:
    """`oci:`/`docker://` references are parsed by nydus_py/oci/ref.py only (with reference.parse_reference,
    which it calls, for the docker:// part): nobody re-parses strings."""
    import re

    offenders = [str(p) for p in PACKAGE.rglob("*.py") if p.name not in ("ref.py", "reference.py")
                 and re.search(r"startswith\(\(?\"(oci|oci-archive|docker-archive|docker):", p.read_text())]
    assert not offenders


CLI_MODULES = ("cli.py", "image_cli.py")  # `nydus-py` and the drop-in `nydus-py-image`


def test_no_printing_outside_cli() -> None:
    import re

    offenders = [str(p) for p in PACKAGE.rglob("*.py")
                 if p.name not in CLI_MODULES and re.search(r"(?<![\w.])print\(|click\.echo", p.read_text())]
    assert not offenders
