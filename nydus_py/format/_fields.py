"""Shared construct helpers: enum adapters and a fast struct.Struct codec derived from a declaration.

The construct declarations are the single source of truth for every on-disk record. Hot paths (a million
inodes, chunk arrays) cannot afford a construct call per record, so `FastStruct` derives a `struct.Struct`
from a flat declaration once; tests prove both write the same bytes.
"""

from __future__ import annotations

import enum
import struct
from typing import Any, Generic, TypeVar

from construct import Adapter, Bytes, Const, Construct, FormatField, Renamed, Struct, ValidationError
from construct.core import Padded


class IntEnumField(Adapter):  # type: ignore[misc]  # construct ships no types: its classes are Any
    """An integer field decoded to an `IntEnum` or `IntFlag` member.

    Unknown values are a ValidationError, except for flags declared with `boundary=enum.KEEP`
    (compat bits, which readers must tolerate).
    """

    def __init__(self, subcon: Construct, enum_type: type[enum.IntEnum] | type[enum.IntFlag]) -> None:
        super().__init__(subcon)
        self.enum_type = enum_type

    def _decode(self, obj: int, context: Any, path: str) -> Any:
        try:
            return self.enum_type(obj)
        except ValueError:
            raise ValidationError(f"{obj:#x} is not a valid {self.enum_type.__name__}", path=path) from None

    def _encode(self, obj: Any, context: Any, path: str) -> int:
        return int(obj)


def _field_format(subcon: Construct) -> tuple[str, bool]:
    """The struct format of one flat field, and whether it carries a value (False: written as zeros)."""
    if isinstance(subcon, Adapter):  # IntEnumField, tar's octal text: the bytes underneath
        return _field_format(subcon.subcon)
    if isinstance(subcon, FormatField):
        if subcon.fmtstr[0] != "<":
            raise TypeError(f"field {subcon} is not little-endian")
        return subcon.fmtstr[1:], True
    if isinstance(subcon, Const):  # a value field: callers pack the constant, unpacking does not check it
        return _field_format(subcon.subcon)
    if isinstance(subcon, Padded):
        return f"{subcon.sizeof()}x", False
    if isinstance(subcon, Bytes):
        return f"{subcon.sizeof()}s", True
    raise TypeError(f"cannot derive a struct format from {subcon!r}")


Record = TypeVar("Record", bound=tuple[Any, ...])  # a NamedTuple class, one field per value field


class FastStruct(Generic[Record]):
    """A `struct.Struct` with named, typed fields, derived once from a flat construct `Struct`.

    `Padding` fields become pad bytes; `Const` fields are ordinary values that unpacking does not check
    (the construct declaration checks them where a reader must). With `only`, the other fields are skipped as
    pad bytes too: a reader that needs a few fields of a record then makes no objects for the rest. `record`
    is the NamedTuple records decode into; its fields must be the declaration's value fields, in order.
    """

    def __init__(self, decl: Struct, record: type[Record], only: tuple[str, ...] | None = None) -> None:
        name = record.__name__
        formats = []
        names = []
        for sub in decl.subcons:
            inner = sub.subcon if isinstance(sub, Renamed) else sub
            fmt, has_value = _field_format(inner)
            if has_value and only is not None and sub.name not in only:
                fmt, has_value = f"{inner.sizeof()}x", False
            formats.append(fmt)
            if has_value:
                names.append(sub.name)
        if only is not None and tuple(names) != only:
            raise TypeError(f"{name}: fields {only} are not fields of the declaration, in its order")
        self.struct = struct.Struct("<" + "".join(formats))
        if self.struct.size != decl.sizeof():
            raise TypeError(f"{name}: derived size {self.struct.size} != {decl.sizeof()}")
        self.size = self.struct.size
        self.fields = tuple(names)
        declared = getattr(record, "_fields", None)  # a NamedTuple's field names (typeshed hides them)
        if declared != self.fields:
            raise TypeError(f"{name}: fields {declared} are not the declaration's {self.fields}")
        self.record = record
        self.pack = self.struct.pack
        self.pack_into = self.struct.pack_into
        self.unpack_from = self.struct.unpack_from
        self.iter_unpack = self.struct.iter_unpack

    def unpack_record(self, buffer: bytes | memoryview, offset: int = 0) -> Record:
        """One record as its NamedTuple (fields in declaration order, pad fields left out)."""
        return self.record(*self.struct.unpack_from(buffer, offset))


__all__ = ["FastStruct", "IntEnumField"]
