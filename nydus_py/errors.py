"""The error hierarchy: every failure the package reports on purpose is a NydusError."""


class NydusError(Exception):
    """Base of every error raised on purpose by nydus-py."""


class FormatError(NydusError):
    """Input image, blob or tar is corrupt or violates the format."""


class BrokenImageError(FormatError):
    """Input is recognizably an image (a Nydus manifest, a bootstrap) whose contents do not decode: a defect
    for `check`, not a stranger's file."""


class UnsupportedError(NydusError):
    """Input is valid but uses something nydus-py does not implement."""


class UsageError(NydusError):
    """The caller gave bad options or paths."""


class InternalError(NydusError):
    """An invariant of our own making broke: a bug in nydus-py."""
