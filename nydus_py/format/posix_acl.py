"""POSIX ACL xattr values (`system.posix_acl_access`, `system.posix_acl_default`) as Linux reads them.

RAFS stores these values as they are. The kernel's EROFS driver hands each to `posix_acl_from_xattr()`,
which refuses (EINVAL, EOPNOTSUPP) anything but a version-2 header followed by whole 8-byte entries with
known tags and valid ids; `setxattr` (so `tar x` and every unpacker) also requires what `posix_acl_valid()`
checks: rwx-only permissions, entries in tag order, USER_OBJ, GROUP_OBJ and OTHER present, and a MASK when
named USER or GROUP entries exist.
References: linux include/uapi/linux/posix_acl_xattr.h, include/uapi/linux/posix_acl.h,
fs/posix_acl.c (posix_acl_from_xattr / make_posix_acl, posix_acl_valid).
"""

from __future__ import annotations

import enum
from typing import NamedTuple
from collections.abc import Mapping

from construct import Const, Int16ul, Int32ul, Struct

from nydus_py.format._fields import FastStruct, IntEnumField

POSIX_ACL_XATTR_VERSION = 0x0002
ACL_UNDEFINED_ID = 0xFFFFFFFF  # e_id of entries that name no user or group; never a valid uid or gid
ACL_PERMS = 0o7  # ACL_READ 4 | ACL_WRITE 2 | ACL_EXECUTE 1
POSIX_ACL_XATTR_NAMES = (b"system.posix_acl_access", b"system.posix_acl_default")


class AclTag(enum.IntEnum):  # posix_acl_xattr_entry.e_tag (ACL_* in include/uapi/linux/posix_acl.h)
    USER_OBJ = 0x01  # the owner
    USER = 0x02  # a named user: e_id is its uid
    GROUP_OBJ = 0x04  # the owning group
    GROUP = 0x08  # a named group: e_id is its gid
    MASK = 0x10  # upper bound of USER, GROUP_OBJ and GROUP
    OTHER = 0x20


PosixAclXattrHeader = Struct(  # posix_acl_xattr_header: the value starts with it
    "a_version" / Const(POSIX_ACL_XATTR_VERSION, Int32ul),  # any other version: EOPNOTSUPP
)
assert PosixAclXattrHeader.sizeof() == 4

PosixAclXattrEntry = Struct(  # posix_acl_xattr_entry: the rest of the value is an array of these
    "e_tag" / IntEnumField(Int16ul, AclTag),
    "e_perm" / Int16ul,  # ACL_PERMS bits
    "e_id" / Int32ul,  # uid (USER) or gid (GROUP); ACL_UNDEFINED_ID for the other tags
)
assert PosixAclXattrEntry.sizeof() == 8

class PosixAclXattrHeaderRecord(NamedTuple):
    """FAST_POSIX_ACL_XATTR_HEADER's record: PosixAclXattrHeader's value fields, in order (plain ints, no enums)."""

    a_version: int


FAST_POSIX_ACL_XATTR_HEADER = FastStruct(PosixAclXattrHeader, PosixAclXattrHeaderRecord)


class PosixAclXattrEntryRecord(NamedTuple):
    """FAST_POSIX_ACL_XATTR_ENTRY's record: PosixAclXattrEntry's value fields, in order (plain ints, no enums)."""

    e_tag: int
    e_perm: int
    e_id: int


FAST_POSIX_ACL_XATTR_ENTRY = FastStruct(PosixAclXattrEntry, PosixAclXattrEntryRecord)

# posix_acl_valid(): per tag, the states it may come in and the state after it (a state names the tag
# expected next; None once OTHER has ended the ACL)
_ORDER: dict[AclTag, tuple[tuple[AclTag | None, ...], AclTag | None]] = {
    AclTag.USER_OBJ: ((AclTag.USER_OBJ,), AclTag.USER),
    AclTag.USER: ((AclTag.USER,), AclTag.USER),
    AclTag.GROUP_OBJ: ((AclTag.USER,), AclTag.GROUP),
    AclTag.GROUP: ((AclTag.GROUP,), AclTag.GROUP),
    AclTag.MASK: ((AclTag.GROUP,), AclTag.OTHER),
    AclTag.OTHER: ((AclTag.GROUP, AclTag.OTHER), None),
}


def acl_problem(value: bytes) -> str | None:
    """Why Linux refuses `value` as a POSIX ACL xattr (posix_acl_from_xattr, then posix_acl_valid), or None."""
    header, entry = FAST_POSIX_ACL_XATTR_HEADER, FAST_POSIX_ACL_XATTR_ENTRY
    if len(value) < header.size or (len(value) - header.size) % entry.size:  # posix_acl_xattr_count()
        return f"{len(value)} bytes is not a {header.size}-byte header plus {entry.size}-byte entries"
    (version,) = header.unpack_from(value)
    if version != POSIX_ACL_XATTR_VERSION:
        return f"version {version:#x}, not {POSIX_ACL_XATTR_VERSION}"
    state: AclTag | None = AclTag.USER_OBJ
    needs_mask = False
    for k, (raw_tag, perm, e_id) in enumerate(entry.iter_unpack(value[header.size :])):
        if raw_tag not in AclTag._value2member_map_:
            return f"entry {k} has tag {raw_tag:#x}, which is not an ACL tag"
        tag = AclTag(raw_tag)
        if tag in (AclTag.USER, AclTag.GROUP):
            if e_id == ACL_UNDEFINED_ID:  # make_kuid / make_kgid: (uid_t)-1 is no id
                return f"entry {k} ({tag.name}) has the invalid id {e_id:#x}"
            needs_mask = True
        if perm & ~ACL_PERMS:
            return f"entry {k} ({tag.name}) has permission bits {perm:#x} beyond rwx"
        allowed, after = _ORDER[tag]
        if tag is AclTag.OTHER and state is AclTag.GROUP and needs_mask:
            return "has named USER or GROUP entries but no MASK entry"
        if state not in allowed:
            return f"entry {k} ({tag.name}) is out of order (USER_OBJ, USER..., GROUP_OBJ, GROUP..., MASK, OTHER)"
        state = after
    if state is not None:
        return "lacks a USER_OBJ, GROUP_OBJ or OTHER entry"
    return None


def acl_xattrs_problem(xattrs: Mapping[bytes, bytes]) -> str | None:
    """The first ACL xattr among `xattrs` that Linux refuses, with why, or None."""
    for name in POSIX_ACL_XATTR_NAMES:
        value = xattrs.get(name)
        problem = None if value is None else acl_problem(value)
        if problem is not None:
            return f"xattr {name.decode()}: {problem}"
    return None
