"""Image references (`docker://REGISTRY/REPO[:TAG|@DIGEST]`) and `--creds`: plain parsing, kept apart from the
registry client so that commands which never reach a registry do not import an HTTP stack."""

from __future__ import annotations

from dataclasses import dataclass

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
    name, digest = (rest.split("@", 1) + [None])[:2] if "@" in rest else (rest, None)
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


def parse_creds(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, secret = text.partition(":")
    if not sep:
        raise UsageError("--creds takes USER:PASSWORD")
    return user, secret


__all__ = ["Reference", "parse_creds", "parse_reference"]
