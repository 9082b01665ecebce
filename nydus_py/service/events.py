"""What `POST /api/v1/conversions` accepts, decoded once into typed requests, and the rules that decide, at the
edge and without queuing, which events become conversions.

Three shapes, told apart by their keys:
- a Harbor webhook (`{"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url", "tag", "digest"}]}}`,
  goharbor/harbor `src/pkg/notifier/model/event.go`), as acceleration-service takes it on the same path;
- a distribution registry notification envelope (`{"events": [...]}`, media type
  `application/vnd.docker.distribution.events.v1+json`, distribution `notifications/event.go`);
- a direct request `{"source": "docker://...", "target": "docker://..."}` (target optional).
A webhook or envelope is never refused for its events (a registry retries a refused notification for ever and
holds every later one behind it, distribution `notifications/sinks.go`): each event not acted on is listed in
`skipped` with its reason. Only a direct request naming a registry not allowed is refused.
References: docs/service.md "The API".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import msgspec

from nydus_py.errors import FormatError, UsageError
from nydus_py.format import oci
from nydus_py.oci.documents import decode
from nydus_py.oci.ref import Reference, strict_reference

MAX_BODY = 1 << 20  # bytes of a request body (a registry envelope of a few events is a few KiB)
MAX_EVENTS = 256  # events or resources in one body
EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
HARBOR_PUSH = "PUSH_ARTIFACT"
_REFERRERS_TAG = re.compile(r"sha256-[a-f0-9]{64}(\..*)?")  # the referrers fallback tag (and cosign's .sig/.att)


class HarborResource(msgspec.Struct, frozen=True):
    resource_url: str
    digest: str = ""
    tag: str = ""


class HarborEventData(msgspec.Struct, frozen=True):
    resources: list[HarborResource] = []


class HarborPayload(msgspec.Struct, frozen=True):
    type: str
    event_data: HarborEventData = HarborEventData()


class NotificationTarget(msgspec.Struct, frozen=True, rename="camel"):
    media_type: str = ""
    digest: str = ""
    repository: str = ""
    tag: str = ""


class NotificationRequest(msgspec.Struct, frozen=True):
    host: str = ""


class NotificationEvent(msgspec.Struct, frozen=True):
    action: str
    target: NotificationTarget = NotificationTarget()
    request: NotificationRequest = NotificationRequest()
    id: str = ""


class Envelope(msgspec.Struct, frozen=True):
    events: list[NotificationEvent]


class DirectRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    source: str
    target: str | None = None


class _Shape(msgspec.Struct, frozen=True):
    """Which of the three a body is, by its keys (their values are decoded by the shape's own type)."""

    type: msgspec.Raw = msgspec.Raw()
    events: msgspec.Raw = msgspec.Raw()
    source: msgspec.Raw = msgspec.Raw()


@dataclass(frozen=True, slots=True)
class ConversionRequest:
    """One conversion asked for: the source (pinned by digest when the event names one) and the target."""

    source: Reference
    target: Reference
    event: str  # how the request names it, for `skipped` and logs


@dataclass(slots=True)
class Decoded:
    kind: str  # "harbor", "notification" or "direct"
    requests: list[ConversionRequest] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (event, reason)


class Refused(UsageError):
    """A direct request the service will not take (4xx): a registry not allowed, a target it cannot write."""


def decode_body(body: bytes, *, allowed: frozenset[str], tag_suffix: str) -> Decoded:
    """The conversions a body asks for and the events skipped, decided from the body alone; FormatError
    when it is not one of the three shapes (or over MAX_BODY, or of more than MAX_EVENTS events); Refused
    for a direct request naming a registry not in `allowed`."""
    if len(body) > MAX_BODY:
        raise FormatError(f"request body: {len(body)} bytes is over the {MAX_BODY >> 10} KiB limit")
    shape = decode(body, _Shape, "request body")
    if shape.events:
        envelope = decode(body, Envelope, "notification envelope")
        _count(len(envelope.events))
        out = Decoded("notification")
        for event in envelope.events:
            _notification(event, out, allowed, tag_suffix)
        return out
    if shape.type:
        payload = decode(body, HarborPayload, "Harbor webhook")
        out = Decoded("harbor")
        if payload.type != HARBOR_PUSH:
            out.skipped.append((payload.type[:80], f"not a push ({HARBOR_PUSH})"))
            return out
        _count(len(payload.event_data.resources))
        for resource in payload.event_data.resources:
            _harbor(resource, out, allowed, tag_suffix)
        return out
    if shape.source:
        return _direct(decode(body, DirectRequest, "request"), allowed, tag_suffix)
    raise FormatError("request body: neither a Harbor webhook, a registry notification nor {\"source\": ...}")


def _count(n: int) -> None:
    if n > MAX_EVENTS:
        raise FormatError(f"request body: {n} events is over the limit of {MAX_EVENTS}")


def _notification(event: NotificationEvent, out: Decoded, allowed: frozenset[str], suffix: str) -> None:
    target, host = event.target, event.request.host
    name = f"{event.action} {host}/{target.repository}:{target.tag or target.digest}"[:300]
    if event.action != "push":
        out.skipped.append((name, f"not a push ({event.action[:40]})"))
        return
    if target.media_type not in (*oci.MANIFEST_TYPES, *oci.INDEX_TYPES):
        out.skipped.append((name, "not an image manifest or index (a blob, or an artifact)"))
        return
    text = f"docker://{host}/{target.repository}{f':{target.tag}' if target.tag else ''}@{target.digest}"
    _add(text, target.tag, name, out, allowed, suffix)


def _harbor(resource: HarborResource, out: Decoded, allowed: frozenset[str], suffix: str) -> None:
    name = resource.resource_url[:300]
    url = resource.resource_url
    if resource.digest and "@" not in url:
        url = f"{url}@{resource.digest}"  # pinned: the tag names the target, the digest the source
    tag = resource.tag if resource.tag and not resource.tag.startswith("sha256:") else ""
    _add(f"docker://{url}", tag, name, out, allowed, suffix)


def _add(text: str, tag: str, name: str, out: Decoded, allowed: frozenset[str], suffix: str) -> None:
    """One pushed image: the rules, then the request (or why not)."""
    try:
        source = strict_reference(text)
    except UsageError as exc:
        out.skipped.append((name, f"not a valid image reference ({exc})"[:300]))
        return
    reason = _skip_reason(source, tag, allowed, suffix)
    if reason is not None:
        out.skipped.append((name, reason))
        return
    target = Reference(registry=source.registry, repository=source.repository, tag=f"{tag}{suffix}")
    out.requests.append(ConversionRequest(source=source, target=target, event=name))


def _skip_reason(source: Reference, tag: str, allowed: frozenset[str], suffix: str) -> str | None:
    """Why a pushed image is not converted: never fetched from a registry not allowed; untagged pushes (an
    index's children, pushes by digest); the service's own output and referrer tags (no loops)."""
    if source.registry not in allowed:
        return f"registry {source.registry} is not allowed"
    if not tag:
        return "untagged (an index's child, or a push by digest)"
    if tag.endswith(suffix):
        return f"a Nydus image (its tag ends in {suffix})"
    if _REFERRERS_TAG.fullmatch(tag):
        return "a referrers tag (sha256-<hex>)"
    return None


def _direct(request: DirectRequest, allowed: frozenset[str], suffix: str) -> Decoded:
    source = strict_reference(request.source)
    if source.registry not in allowed:
        raise Refused(f"{request.source[:300]}: registry {source.registry} is not allowed")
    if request.target is not None:
        target = strict_reference(request.target)
        if target.digest is not None:
            raise Refused(f"{request.target[:300]}: push to a tag, not a digest")
    else:
        target = Reference(registry=source.registry, repository=source.repository,
                           tag=f"{source.tag or 'latest'}{suffix}")
    if target.registry not in allowed:
        raise Refused(f"{request.target or request.source}: registry {target.registry} is not allowed")
    return Decoded("direct", requests=[ConversionRequest(source=source, target=target, event=request.source[:300])])


__all__ = ["EVENTS_MEDIA_TYPE", "MAX_BODY", "ConversionRequest", "Decoded", "Refused", "decode_body"]
