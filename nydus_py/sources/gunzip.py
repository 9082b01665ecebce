"""A gzip stream decompressed on a thread of its own, read like `gzip.GzipFile`.

A gzip'd layer is the common case of `convert` and of building from a tar.gz, and inflating it (zlib
releases the GIL) took a third of the thread that also parses the tar and feeds the chunker. Here a reader
thread inflates ahead, at most `AHEAD` blocks of at most `BLOCK` bytes, while the caller reads. For regular
files only: a read from a pipe can block for ever, and a thread blocked on stdin aborts interpreter exit.

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
from typing import BinaryIO, TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

BLOCK = 1 << 20  # compressed bytes read, and decompressed bytes made, at a time
AHEAD = 8  # blocks inflated ahead of the reader: memory is bounded by AHEAD * BLOCK
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer around a deflate stream
_REPLAY_STEP = 4096


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
            if self._started_member:  # zero bytes may pad the end of the stream
                while not (pending := pending.lstrip(b"\0")):
                    pending = self._raw.read(BLOCK)
                    if not pending:
                        return
            while len(pending) < 2 and (more := self._raw.read(BLOCK)):  # a magic split between two reads
                pending += more
            if not pending and not self._started_member:
                return
            if not pending.startswith(b"\x1f\x8b"):
                raise gzip.BadGzipFile(f"Not a gzipped file ({pending[:2]!r})")
            self._started_member = True
            rest = self._inflate_member(zlib.decompressobj(_GZIP_WBITS), pending)
            if rest is None:
                return
            pending = rest

    def _inflate_member(self, inflater: zlib._Decompress, pending: bytes) -> bytes | None:
        """Inflate one member starting in `pending`; the bytes after it, or None once the caller closed."""
        while not inflater.eof:
            if not pending:
                pending = self._raw.read(BLOCK)
                if not pending:
                    raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            before = inflater.copy()
            try:
                out = inflater.decompress(pending, BLOCK)  # at most BLOCK out, the rest in unconsumed_tail
            except zlib.error:
                self._put_before_error(before, pending)
                raise
            pending = inflater.unconsumed_tail
            if out and not self._put(out):
                return None
        return inflater.unused_data

    def _put_before_error(self, inflater: zlib._Decompress, pending: bytes) -> None:
        """Hand over what `pending` inflates to before the error it ends in (zlib raises a bad CRC or length
        in the trailer with the member's last bytes still in hand), so the caller reads the data first and
        meets the error where GzipFile raises it, after the last entry. In 4 KiB steps, the failing one again
        byte by byte; the output is under BLOCK, as the failed call stopped before BLOCK."""
        out = []
        for at in range(0, len(pending), _REPLAY_STEP):
            saved = inflater.copy()
            try:
                out.append(inflater.decompress(pending[at : at + _REPLAY_STEP]))
            except zlib.error:
                for i in range(at, min(at + _REPLAY_STEP, len(pending))):
                    try:
                        out.append(saved.decompress(pending[i : i + 1]))
                    except zlib.error:
                        break
                break
        self._put(b"".join(out))

    # --- the caller ------------------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def readinto(self, target: WriteableBuffer) -> int:
        buffer = memoryview(target).cast("B")
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
            self._thread.join()  # a regular file's read returns: the thread sees the stop at its next block
            self._raw.close()
        super().close()


def threaded_gunzip(raw: BinaryIO) -> BinaryIO:
    """`raw`'s gzip stream, inflated ahead on a thread, behind a buffer."""
    return io.BufferedReader(ThreadedGzipReader(raw), buffer_size=BLOCK)
