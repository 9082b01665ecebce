"""Image references, parsed once at the edge: `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`,
`docker-archive:FILE[:REF]` and `docker://REGISTRY/REPO[:TAG|@DIGEST]`.

Everything below the CLI takes an `ImageRef`, never a string to re-parse. A path and a tag are split at the
last ':' unless the whole text names an existing path (as skopeo does for `oci:`), so `oci:out:v1` is the
layout `out` tagged `v1` and `oci:/a:b` the layout `/a:b` when that exists. A docker-archive REF is a repo tag
(`example:v1`), or a bare tag matched against the archive's repo tags.
References: containers/image transports (oci, oci-archive, docker-archive, docker).
"""

from __future__ import annotations

import enum
import re
import os
from dataclasses import dataclass
from pathlib import Path

from nydus_py.errors import UsageError


@dataclass(frozen=True, slots=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def ref(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        suffix = f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}"
        return f"{self.registry}/{self.repository}{suffix}"


def parse_reference(text: str) -> Reference:
    """`docker://REGISTRY/REPO[:TAG|@sha256:...]`; Docker Hub names as docker does."""
    if not text.startswith("docker://"):
        raise UsageError(f"{text}: a registry reference starts with docker://")
    rest = text[len("docker://") :]
    name, at, digest_text = rest.partition("@")
    digest = digest_text if at else None
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    first, _, remainder = name.partition("/")
    if not remainder or ("." not in first and ":" not in first and first != "localhost"):
        registry, repository = "registry-1.docker.io", name if "/" in name else f"library/{name}"
    else:
        registry, repository = first, remainder
    if not repository or (digest is not None and not digest.startswith("sha256:")):
        raise UsageError(f"{text}: not a valid image reference")
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)


# the distribution grammar (distribution/reference regexp.go): what a stranger's reference must match before it
# becomes a URL or a key
_HOST = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*"
                   r"(?::[0-9]{1,5})?")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_REPOSITORY = re.compile(f"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_SHA256 = re.compile(r"sha256:[a-f0-9]{64}")


def strict_reference(text: str) -> Reference:
    """`parse_reference`, then every part checked against the distribution grammar (host, repository of at
    most 255 characters, tag, sha256 digest): UsageError naming the part otherwise."""
    ref = parse_reference(text)
    problems = [what for what, ok in (
        ("registry host", _HOST.fullmatch(ref.registry) is not None and len(ref.registry) <= 255),
        ("repository", _REPOSITORY.fullmatch(ref.repository) is not None and len(ref.repository) <= 255),
        ("tag", ref.tag is None or _TAG.fullmatch(ref.tag) is not None),
        ("digest", ref.digest is None or _SHA256.fullmatch(ref.digest) is not None)) if not ok]
    if problems:
        raise UsageError(f"{text[:300]}: not a valid image reference ({', '.join(problems)})")
    return ref


def parse_creds(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, secret = text.partition(":")
    if not sep:
        raise UsageError("--creds takes USER:PASSWORD")
    return user, secret


class Transport(enum.Enum):
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"
    DOCKER = "docker"


FORMS = "oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:REF] or docker://REGISTRY/REPO[:TAG|@DIGEST]"


@dataclass(frozen=True, slots=True)
class ImageRef:
    """Where an image is: a local layout or archive (`path`, `tag`) or a registry (`remote`)."""

    transport: Transport
    text: str  # as the user wrote it, for messages
    path: Path | None = None
    tag: str | None = None  # oci/oci-archive: the ref.name annotation; docker-archive: a repo tag
    remote: Reference | None = None

    def __str__(self) -> str:
        return self.text

    @property
    def local(self) -> bool:
        return self.transport is not Transport.DOCKER

    def registry_ref(self) -> Reference:
        if self.remote is None:
            raise UsageError(f"{self.text}: not a registry reference")
        return self.remote


def _split_path(rest: str) -> tuple[str, str | None]:
    """`PATH[:TAG]`: the tag follows the first ':' (as skopeo and containers/image split `oci:` references, so
    `oci:DIR:a:b` is DIR with tag `a:b`), unless the whole text names an existing path."""
    if os.path.lexists(rest) or ":" not in rest:
        return rest, None
    path, _, tag = rest.partition(":")
    return path, tag or None


def parse_image_ref(text: str) -> ImageRef:
    """Parse one image reference (exit 2 naming it when it is none of the four forms)."""
    scheme, sep, rest = text.partition(":")
    if scheme == "docker" and sep:
        # `docker:/x` (a shell that squeezed the slashes) is accepted as docker://x
        remote = parse_reference("docker://" + rest.lstrip("/"))
        return ImageRef(Transport.DOCKER, text, remote=remote)
    for transport in (Transport.OCI, Transport.OCI_ARCHIVE, Transport.DOCKER_ARCHIVE):
        if scheme == transport.value and sep:
            if transport is Transport.DOCKER_ARCHIVE:
                # FILE[:REF] where REF is itself NAME:TAG: split after the archive file name
                path, ref = _split_archive(rest)
            else:
                path, ref = _split_path(rest)
            if not path:
                raise UsageError(f"{text}: no path")
            return ImageRef(transport, text, path=Path(path), tag=ref)
    raise UsageError(f"{text}: not an image reference; use {FORMS}")


def _split_archive(rest: str) -> tuple[str, str | None]:
    """docker-archive:FILE[:REF]: REF may hold a ':' itself (`example:v1`), so take the longest prefix that
    names an existing file; else split at the first ':' after the last '/' of the path part."""
    if os.path.lexists(rest) or ":" not in rest:
        return rest, None
    cut = 0
    while (cut := rest.find(":", cut + 1)) != -1:
        if os.path.lexists(rest[:cut]):
            return rest[:cut], rest[cut + 1 :] or None
    slash = rest.rfind("/")
    first = rest.find(":", slash + 1)
    return rest[:first], rest[first + 1 :] or None


def is_image_ref(text: str) -> bool:
    """Whether `text` is written as an image reference (`oci:`, `oci-archive:`, `docker-archive:`, `docker:`)
    rather than a file path."""
    scheme, sep, _ = text.partition(":")
    return bool(sep) and scheme in {t.value for t in Transport}


def parse_target_ref(text: str) -> ImageRef:
    """A TARGET: `oci:DIR[:TAG]` or `docker://REGISTRY/REPO[:TAG]` (a digest cannot be pushed to)."""
    ref = parse_image_ref(text)
    if ref.transport not in (Transport.OCI, Transport.DOCKER):
        raise UsageError(f"{text}: a target is oci:DIR[:TAG] or docker://REGISTRY/REPO[:TAG]")
    if ref.remote is not None and ref.remote.digest:
        raise UsageError(f"{text}: push to a tag, not a digest")
    return ref


NYDUS_TAG_SUFFIX = "-nydus"  # acceld's default tag suffix for converted images


def default_target(source: ImageRef) -> ImageRef:
    """The TARGET a registry SOURCE converts into when none is given: its own repository, tag + `-nydus`
    (`latest-nydus` for an untagged source, `nydus` for one named by digest). A zran image must live there:
    nydusd fetches the original layers from the image's repository (docs/oci.md §1.7)."""
    if source.remote is None:
        raise UsageError(f"{source}: give a TARGET (only a docker:// SOURCE has a default one)")
    remote = source.remote
    tag = "nydus" if remote.digest else f"{remote.tag or 'latest'}{NYDUS_TAG_SUFFIX}"
    return parse_target_ref(f"docker://{remote.registry}/{remote.repository}:{tag}")


def output_ref(text: str) -> ImageRef:
    """`build -o`/`merge -o`: a directory, `oci:DIR[:TAG]` or `docker://REGISTRY/REPO[:TAG]`."""
    scheme, sep, _ = text.partition(":")
    if sep and scheme in (Transport.OCI.value, Transport.DOCKER.value):
        return parse_target_ref(text)
    return ImageRef(Transport.OCI, text, path=Path(text))


__all__ = ["FORMS", "ImageRef", "Reference", "Transport", "default_target", "is_image_ref", "output_ref", "parse_creds",
           "parse_image_ref", "parse_reference", "parse_target_ref", "strict_reference"]
