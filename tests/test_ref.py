"""Image references are parsed once, at the edge (nydus_py/oci/ref.py), the way skopeo reads the same text."""

from __future__ import annotations

from pathlib import Path

import pytest

from nydus_py.errors import UsageError
from nydus_py.oci.ref import Transport, parse_image_ref


@pytest.mark.parametrize(("text", "transport", "path", "tag"), [
    ("oci:out", Transport.OCI, "out", None),
    ("oci:/tmp/out:v1", Transport.OCI, "/tmp/out", "v1"),
    ("oci:out:a:b", Transport.OCI, "out", "a:b"),  # skopeo: the path ends at the first ':'
    ("oci-archive:img.tar:v1", Transport.OCI_ARCHIVE, "img.tar", "v1"),
    ("docker-archive:img.tar:example:v1", Transport.DOCKER_ARCHIVE, "img.tar", "example:v1"),
])
def test_local_references(text: str, transport: Transport, path: str, tag: str | None) -> None:
    ref = parse_image_ref(text)
    assert (ref.transport, ref.path, ref.tag) == (transport, Path(path), tag)


def test_an_existing_path_with_a_colon_is_the_path(tmp_path: Path) -> None:
    layout = tmp_path / "a:b"
    layout.mkdir()
    ref = parse_image_ref(f"oci:{layout}")
    assert (ref.path, ref.tag) == (layout, None)


@pytest.mark.parametrize("text", ["out", "oci:", "ftp://x/y", "oci-archive:"])
def test_not_a_reference(text: str) -> None:
    with pytest.raises(UsageError):
        parse_image_ref(text)
