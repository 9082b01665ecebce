"""nydus-py: build, read, check and mount Nydus (RAFS v6) container images."""

from nydus_py.blob.device import expand_blob
from nydus_py.blob.reader import BlobReader
from nydus_py.bootstrap.reader import read_bootstrap
from nydus_py.errors import FormatError, InternalError, NydusError, UnsupportedError, UsageError
from nydus_py.locate import open_image

__all__ = [
    "BlobReader",
    "FormatError",
    "InternalError",
    "NydusError",
    "UnsupportedError",
    "UsageError",
    "expand_blob",
    "open_image",
    "read_bootstrap",
]
__version__ = "0.1.0"
