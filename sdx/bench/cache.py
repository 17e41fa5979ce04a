"""The evaluator's on-disk embedding cache and the fingerprints that key it (rules in docs/benchmark.md)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz")
CONFIG_SUFFIXES = (".json", ".txt")
MAX_CONFIG_BYTES = 5_000_000  # larger "config" files (e.g. a big vocab dump) count by name only, never read


def sha1(data: bytes | str) -> str:
    return hashlib.sha1(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def model_fingerprint(name_or_path: str | os.PathLike) -> str:
    """SHA-1 of a model: config bytes + weight-file name/size/mtime (local dir) or the Hub id."""
    p = Path(name_or_path)
    h = hashlib.sha1(str(name_or_path).encode())
    if p.is_dir():
        for f in sorted(p.rglob("*")):
            rel = f.relative_to(p)
            if not f.is_file() or any(part.startswith("checkpoint-") or part == "runs" for part in rel.parts[:-1]):
                continue
            if f.suffix in CONFIG_SUFFIXES and f.stat().st_size < MAX_CONFIG_BYTES:
                h.update(rel.as_posix().encode() + b"\0" + f.read_bytes())
            elif f.suffix in WEIGHT_SUFFIXES:
                st = f.stat()
                h.update(f"{rel.as_posix()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def read_chunk(keys_file: Path, arr_file: Path) -> dict[str, np.ndarray]:
    """{key: row} of one cache chunk; ValueError naming the file when it is truncated or inconsistent."""
    try:
        keys = json.loads(keys_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{keys_file}: unreadable key list ({err})") from None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"{keys_file}: not a list of keys")
    try:
        arr = np.load(arr_file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{arr_file}: unreadable array ({err})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim == 0 or len(keys) != len(arr):
        raise ValueError(f"{keys_file}: {len(keys)} keys for an array of shape {getattr(arr, 'shape', '?')} in "
                         f"{arr_file.name}")
    return dict(zip(keys, arr))


class ArrayStore:
    """Append-only key -> array cache (one per model and kind), in memory when ``directory`` is None.

    Each chunk is a ``chunk_*.npy`` and its ``chunk_*.json`` key list, each written under a temporary name and
    renamed. A chunk that cannot be read (truncated, not JSON, lengths that differ) is discarded with a warning
    naming its file, counted in ``discarded``, and its rows are encoded again."""

    def __init__(self, directory: Path | None):
        self.dir = directory
        self.rows: dict[str, np.ndarray] = {}
        self.encoded = 0    # items computed by the encoder in this process
        self.reused = 0     # items served from the cache
        self.discarded = 0  # damaged chunks removed when the store was opened
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            # a chunk is found by its key list, renamed in after its array: an .npy alone is a write in progress
            # (or an interrupted one) and is left alone
            for keys_file in sorted(directory.glob("chunk_*.json")):
                arr_file = keys_file.with_suffix(".npy")
                try:
                    self.rows.update(read_chunk(keys_file, arr_file))
                except ValueError as err:
                    logger.warning("embedding cache: discarding a damaged chunk, its rows are encoded again: %s", err)
                    keys_file.unlink(missing_ok=True)
                    arr_file.unlink(missing_ok=True)
                    self.discarded += 1

    def put(self, keys: Sequence[str], arr: np.ndarray) -> None:
        """Store rows computed elsewhere (e.g. patch tokens from the embedding pass)."""
        keys = list(keys)
        new = [i for i, k in enumerate(keys) if k not in self.rows]
        if not new:
            return
        keys, arr = [keys[i] for i in new], np.asarray(arr)[new]
        self.rows.update(zip(keys, arr))
        self.encoded += len(keys)
        self._write(keys, arr)

    def _write(self, keys: list[str], arr: np.ndarray) -> None:
        if self.dir is None:
            return
        stem = self.dir / f"chunk_{time.time_ns()}_{uuid.uuid4().hex[:8]}"
        tmp = stem.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, stem.with_suffix(".npy"))
        tmp_keys = stem.with_suffix(".json.tmp")
        tmp_keys.write_text(json.dumps(keys))
        os.replace(tmp_keys, stem.with_suffix(".json"))

    def get(self, keys: Sequence[str], compute: Callable[[list[int]], np.ndarray]) -> np.ndarray:
        """Rows for ``keys``; ``compute(positions)`` encodes the missing ones (positions index ``keys``)."""
        missing, seen = [], set()
        for i, k in enumerate(keys):
            if k not in self.rows and k not in seen:
                missing.append(i)
                seen.add(k)
        self.reused += len(keys) - len(missing)
        if missing:
            arr = np.asarray(compute(missing))
            if len(arr) != len(missing):
                raise RuntimeError(f"encoder returned {len(arr)} rows for {len(missing)} items")
            new_keys = [keys[i] for i in missing]
            self.rows.update(zip(new_keys, arr))
            self.encoded += len(missing)
            self._write(new_keys, arr)
        if not keys:
            return np.zeros((0,))
        return np.stack([self.rows[k] for k in keys])
