"""A gzip stream decompressed on a thread of its own, read like `gzip.GzipFile`.

A gzip'd layer is the common case of `convert` and of building from a tar.gz, and inflating it (zlib
releases the GIL) took a third of the thread that also parses the tar and feeds the chunker. Here a reader
thread inflates ahead, at most `AHEAD` blocks of at most `BLOCK` bytes, while the caller reads.

Same stream rules as `gzip.GzipFile`: members may be concatenated, zero bytes may pad the end, each member's
CRC-32 and length are checked (zlib does it in gzip mode), a stream that ends inside a member is EOFError,
anything else after a member is `gzip.BadGzipFile`, corrupt data is `zlib.error`. The reader thread stops
at the end, on an error (raised to the caller at its next read) or when the caller closes the stream.
"""

from __future__ import annotations

import gzip
import io
import queue
import threading
import zlib
from typing import BinaryIO

BLOCK = 1 << 20  # compressed bytes read, and decompressed bytes made, at a time
AHEAD = 8  # blocks inflated ahead of the reader: memory is bounded by AHEAD * BLOCK
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer around a deflate stream


class ThreadedGzipReader(io.RawIOBase):
    """The decompressed bytes of the gzip stream `raw` (owned: closed with this reader)."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self._blocks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=AHEAD)
        self._stop = threading.Event()
        self._buffer = memoryview(b"")
        self._done = False
        self._error: BaseException | None = None  # raised again at every read once it happened
        self._started_member = False  # (reader thread) a member began: zero bytes may pad the end now
        self._thread = threading.Thread(target=self._inflate_all, name="nydus-gunzip", daemon=True)
        self._thread.start()

    # --- the reader thread -----------------------------------------------------------------------------

    def _put(self, item: bytes | BaseException | None) -> bool:
        """Hand `item` to the caller; False once the caller has closed the stream."""
        while not self._stop.is_set():
            try:
                self._blocks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _inflate_all(self) -> None:
        try:
            self._inflate_members()
        except BaseException as exc:  # noqa: BLE001 - raised to the caller at its next read
            self._put(exc)
        else:
            self._put(None)

    def _inflate_members(self) -> None:
        pending = b""  # compressed bytes read but not inflated yet
        while True:  # one gzip member per pass
            while not pending:
                pending = self._raw.read(BLOCK)
                if not pending:
                    return
            pending = pending.lstrip(b"\0") if self._started_member else pending
            if not pending:
                continue
            if not pending.startswith(b"\x1f\x8b"):
                raise gzip.BadGzipFile(f"Not a gzipped file ({pending[:2]!r})")
            self._started_member = True
            inflater = zlib.decompressobj(_GZIP_WBITS)
            while not inflater.eof:
                if not pending:
                    pending = self._raw.read(BLOCK)
                    if not pending:
                        raise EOFError("Compressed file ended before the end-of-stream marker was reached")
                out = inflater.decompress(pending, BLOCK)  # at most BLOCK out, the rest in unconsumed_tail
                pending = inflater.unconsumed_tail
                if out and not self._put(out):
                    return
            pending = inflater.unused_data

    # --- the caller ------------------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._error is not None:
            raise self._error
        while not self._buffer and not self._done:
            item = self._blocks.get()
            if item is None:
                self._done = True
            elif isinstance(item, BaseException):
                self._done = True
                self._error = item
                raise item
            else:
                self._buffer = memoryview(item)
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            # a reader thread blocked on a stalled pipe (stdin) is left to end with the process, with `raw`
            self._thread.join(timeout=1.0)
            if not self._thread.is_alive():
                self._raw.close()
        super().close()


def threaded_gunzip(raw: BinaryIO) -> BinaryIO:
    """`raw`'s gzip stream, inflated ahead on a thread, behind a buffer."""
    return io.BufferedReader(ThreadedGzipReader(raw), buffer_size=BLOCK)
