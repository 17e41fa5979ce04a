"""Keeping the builder's memory flat as the data grows: a JSON list read one element at a time, and a spill file.

The raw text files hold one JSON list each (the release's format), so they are parsed element by element instead
of whole; what the check of a record produces for the writing step (the record itself, re-encoded image or mask
bytes) waits in a temporary spill file, not in memory. Measured: docs/performance.md (builder scale rows).
"""

from __future__ import annotations

import codecs
import json
import os
import pickle
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["JsonListError", "NotAList", "Spill", "SpillEntry", "iter_json_list"]

_NOT_WHITESPACE = re.compile(r"[^ \t\n\r]")


class JsonListError(ValueError):
    """Malformed JSON or text that is not UTF-8; ``where`` says where ("line 3 column 5" or "byte 17")."""

    def __init__(self, message: str, where: str):
        self.where = where
        super().__init__(message)


class NotAList(ValueError):
    """The file's root value is not a JSON list."""


class _Reader:
    """A growing window of the file's text: ``buf[pos:]`` is what is left to parse."""

    def __init__(self, f, chunk_size: int):
        self.f, self.chunk_size = f, chunk_size
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
        self.buf, self.pos, self.eof = "", 0, False
        self.bytes_read = 0
        self.line, self.column = 0, 0  # newlines and characters since the last newline, in text already dropped

    def fill(self) -> bool:
        """Read one more chunk; False at the end of the file."""
        if self.eof:
            return False
        raw = self.f.read(self.chunk_size)
        try:
            text = self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            at = self.bytes_read + e.start
            raise JsonListError(f"not valid UTF-8 text (byte {at}: {e.object[e.start:e.start + 1]!r})",
                                f"byte {at}") from None
        self.bytes_read += len(raw)
        self.eof = not raw
        self.buf += text
        return True

    def peek(self) -> str:
        while self.pos >= len(self.buf):
            if not self.fill():
                return ""
        return self.buf[self.pos]

    def skip_whitespace(self) -> str:
        """Move past whitespace; the next character, or "" at the end of the file."""
        while True:
            found = _NOT_WHITESPACE.search(self.buf, self.pos)
            if found:
                self.pos = found.start()
                return self.buf[self.pos]
            self.pos = len(self.buf)
            if not self.fill():
                return ""

    def drop_parsed(self) -> None:
        """Forget the text before ``pos`` once it exceeds a chunk, keeping line and column counts."""
        if self.pos < self.chunk_size:
            return
        done = self.buf[:self.pos]
        newlines = done.count("\n")
        self.column = len(done) - done.rfind("\n") - 1 if newlines else self.column + len(done)
        self.line += newlines
        self.buf, self.pos = self.buf[self.pos:], 0

    def where(self, index: int) -> str:
        newlines = self.buf.count("\n", 0, index)
        column = index - self.buf.rfind("\n", 0, index) if newlines else self.column + index + 1
        return f"line {self.line + newlines + 1} column {column}"

    def error(self, message: str, index: int) -> JsonListError:
        where = self.where(index)
        return JsonListError(f"malformed JSON at {where}: {message}", where)


def _next_value(reader: _Reader, decoder: json.JSONDecoder) -> Any:
    while True:
        try:
            value, end = decoder.raw_decode(reader.buf, reader.pos)
        except json.JSONDecodeError as e:
            if reader.fill():  # the element may run on past the text read so far
                continue
            raise reader.error(e.msg, e.pos) from None
        except RecursionError:
            raise reader.error("nested too deeply", reader.pos) from None
        # a number ending within two characters of the text read so far ("1e", "-0.") may go on in the next chunk
        if not isinstance(value, (dict, list, str)) and end >= len(reader.buf) - 2 and reader.fill():
            continue
        reader.pos = end
        reader.drop_parsed()
        return value


def iter_json_list(path: str | os.PathLike, chunk_size: int = 1 << 20) -> Iterator[Any]:
    """The elements of a JSON file whose root is a list, in order, read ``chunk_size`` bytes at a time.

    Raises JsonListError for malformed JSON or non-UTF-8 text (with line and column, as ``json`` gives them) and
    NotAList when the root is not a list (the caller can then read the file whole to say what it is)."""
    decoder = json.JSONDecoder()
    with open(path, "rb") as f:
        reader = _Reader(f, chunk_size)
        if reader.skip_whitespace() != "[":
            raise NotAList(str(path))
        reader.pos += 1
        if reader.skip_whitespace() == "]":
            reader.pos += 1
        else:
            while True:
                reader.skip_whitespace()
                yield _next_value(reader, decoder)
                c = reader.skip_whitespace()
                reader.pos += 1
                if c == "]":
                    break
                if c != ",":
                    raise reader.error("Expecting ',' delimiter", reader.pos - 1)
        if reader.skip_whitespace():
            raise reader.error("Extra data", reader.pos)


class SpillEntry(NamedTuple):
    """What the check of one item left for the writing step."""

    record: dict
    mask_name: str | None       # the mask file's name in the split's mask folder
    image: bytes | None         # the image re-encoded (16-bit, EXIF orientation); None: the file's own bytes
    mask: bytes | None          # the binarised mask PNG; None: the mask file's own bytes (or no mask)


class Spill:
    """An append-only temporary file of SpillEntry blobs, addressed by (offset, length).

    The file is this process's own (created private and already unlinked, so no other process can open it) and
    is read back only by this process: pickle is safe here, and 4x faster than JSON for these entries.
    """

    BUFFER = 1 << 20  # writes reach the disk a megabyte at a time (a write call costs ~0.1 ms on a VM disk)

    def __init__(self, folder: str | os.PathLike | None = None):
        folder = folder if folder is not None and Path(folder).is_dir() else None
        self._file = tempfile.TemporaryFile(prefix="sdx-spill-", dir=folder,  # noqa: SIM115 (open until close())
                                            buffering=self.BUFFER)
        self._end, self._unflushed = 0, False

    def put(self, entry: SpillEntry) -> tuple[int, int]:
        blob = pickle.dumps(tuple(entry), protocol=pickle.HIGHEST_PROTOCOL)
        self._file.write(blob)  # buffered and sequential: the file position is always its end
        self._unflushed = True
        at, self._end = self._end, self._end + len(blob)
        return at, len(blob)

    def get(self, at: int, length: int) -> SpillEntry:
        if self._unflushed:
            self._file.flush()
            self._unflushed = False
        return SpillEntry(*pickle.loads(os.pread(self._file.fileno(), length, at)))  # positioned read

    def close(self) -> None:
        self._file.close()
