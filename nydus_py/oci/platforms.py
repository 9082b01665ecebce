"""Platforms of images, compared the way containerd compares them.

An index entry and a `--platform OS/ARCH[/VARIANT]` match when both normalize to the same platform:
architecture and variant spellings are normalized as containerd's `platforms` package does
(`x86_64` -> `amd64`, `aarch64` -> `arm64`, `arm64/v8` -> `arm64`, `arm` -> `arm/v7`, `armhf` -> `arm/v7`,
`armel` -> `arm/v6`, `i386` -> `386`, ...), then compared exactly. Every source kind (layout, archives,
registries) selects its images with `select_platforms`.
References: containerd/platforms database.go (normalizeOS, normalizeArch); OCI image-spec image-index.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from nydus_py.errors import UsageError

Json = dict[str, Any]


class _Described(Protocol):
    """What platform selection needs of an image: its platform and its index entry."""

    @property
    def platform(self) -> Json | None: ...

    @property
    def manifest_descriptor(self) -> Any: ...


SourceImage = TypeVar("SourceImage", bound=_Described)


@dataclass(frozen=True, slots=True)
class Platform:
    """A normalized OS/ARCH[/VARIANT]."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def normalize_platform(os: str, architecture: str, variant: str = "") -> Platform:
    """containerd's normalizeOS + normalizeArch (its newest table, which also erases `v8.0` and maps
    `9`/`9.0`/`v9.0` to `v9`)."""
    os, arch, variant = os.lower(), architecture.lower(), variant.lower()
    if os == "macos":
        os = "darwin"
    if arch == "i386":
        arch, variant = "386", ""
    elif arch in ("x86_64", "x86-64", "amd64"):
        arch, variant = "amd64", "" if variant == "v1" else variant
    elif arch in ("aarch64", "arm64"):
        arch = "arm64"
        variant = {"8": "", "v8": "", "v8.0": "", "9": "v9", "9.0": "v9", "v9.0": "v9"}.get(variant, variant)
    elif arch == "armhf":
        arch, variant = "arm", "v7"
    elif arch == "armel":
        arch, variant = "arm", "v6"
    elif arch == "arm":
        variant = {"": "v7", "7": "v7", "5": "v5", "6": "v6", "8": "v8"}.get(variant, variant)
    return Platform(os, arch, variant)


def platform_of(doc: Json | None) -> Platform:
    """The normalized platform of a descriptor's (or config's) `platform` object."""
    doc = doc or {}
    return normalize_platform(str(doc.get("os") or ""), str(doc.get("architecture") or ""),
                              str(doc.get("variant") or ""))


def image_platform(descriptor_platform: Json | None, config: Json) -> Json:
    """An image's platform: its index descriptor's, else what its config says (os, architecture, variant)."""
    out: Json = dict(descriptor_platform
                     or {"architecture": config.get("architecture", ""), "os": config.get("os", "")})
    if isinstance(config.get("variant"), str) and "variant" not in out:
        out["variant"] = config["variant"]
    return out


def platform_text(platform: Json | None) -> str:
    """A platform object as written (not normalized): `os/architecture[/variant]`."""
    if not platform:
        return "unknown"
    parts = [platform.get("os", ""), platform.get("architecture", "")]
    if platform.get("variant"):
        parts.append(platform["variant"])
    return "/".join(parts)


def parse_platform(text: str) -> Json:
    """`OS/ARCH[/VARIANT]` as a platform object (as given, not normalized)."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"--platform {text!r}: use OS/ARCH or OS/ARCH/VARIANT (e.g. linux/amd64)")
    out: Json = {"architecture": parts[1], "os": parts[0]}
    if len(parts) == 3:
        out["variant"] = parts[2]
    return out


def select_platforms(images: list[SourceImage], wanted: list[str] | None, where: str) -> list[SourceImage]:
    """The images of `where` whose platform matches one of `wanted` (all when none is wanted); two of them
    for the same platform are an error naming both."""
    if wanted:
        targets = {platform_of(parse_platform(text)) for text in wanted}
        images = [i for i in images if platform_of(i.platform) in targets]
        if not images:
            raise UsageError(f"{where}: no image for platform {', '.join(wanted)}")
    return _distinct(images, where)


def _distinct(images: list[SourceImage], where: str) -> list[SourceImage]:
    """`images` without repeats of one manifest; two different manifests of one kind for the same normalized
    platform are an error (containerd would take whichever comes first). Entries that say they are something
    else for that platform (an `artifactType`, or `os.features` such as nydusify's Nydus marker) are other
    kinds, not duplicates."""
    seen: dict[tuple[Platform, tuple[str, ...], str], SourceImage] = {}
    out = []
    for image in images:
        features = (image.platform or {}).get("os.features") or []
        key = (platform_of(image.platform), tuple(sorted(map(str, features))),
               image.manifest_descriptor.artifact_type or "")
        first = seen.setdefault(key, image)
        if first is image:
            out.append(image)
        elif first.manifest_descriptor.digest != image.manifest_descriptor.digest:
            raise UsageError(f"{where}: index entries {first.manifest_descriptor.digest} "
                             f"({platform_text(first.platform)}) and {image.manifest_descriptor.digest} "
                             f"({platform_text(image.platform)}) are the same platform {key[0]}")
    return out
