"""OpenAI-compatible chat client for the language-model annotation steps, and the loop that runs them.

``describe`` (T2 from an image) and ``annotate --llm_fields`` (Shape, Direction, Spatial Distribution from T2)
send their requests through :class:`ChatClient`: standard-library HTTP (no client package needed), retries
with exponential backoff on transient errors, and an on-disk answer cache keyed by (image hash, prompt, model,
sampling settings, sample index), so an interrupted run resumes and a re-run makes no request.
:func:`run_items` runs one job per image on a bounded thread pool with a progress bar and periodic checkpoints;
a failed image is returned as a named failure, never dropped.

The API key is read from an environment variable and sent only in the Authorization header: it never enters a
cache key, a cache file, a report or a log line (error texts are scrubbed of it). Specification:
docs/annotation_llm.md.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import hashlib
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "AnswerCache",
    "ChatClient",
    "Endpoint",
    "EndpointFatal",
    "RequestFailed",
    "add_endpoint_args",
    "endpoint_from_args",
    "public_url",
    "run_items",
    "write_json_atomic",
]

TRANSIENT_STATUS = frozenset({408, 425, 429}) | frozenset(range(500, 600))
FATAL_STATUS = frozenset({401, 403, 404})   # every request would fail the same way: stop the run
MAX_DELAY_S = 60.0


class RequestFailed(Exception):
    """One request failed for good (after its retries): the item it belongs to fails, the run goes on."""


class EndpointFatal(ValueError):
    """The endpoint refuses every request (bad key, unknown model or URL): the run stops (a ValueError, so the
    command line ends with its one-line message)."""


@dataclass
class Endpoint:
    """Where and how to send chat requests (the key itself is never stored here: only the variable's name)."""

    api_base: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    max_retries: int = 5
    retry_backoff: float = 1.0
    request_timeout: float = 120.0
    cache_dir: str | None = None

    def public(self) -> dict[str, Any]:
        """The settings as written to run reports (URL without user info or query)."""
        return {**asdict(self), "api_base": public_url(self.api_base)}


def public_url(url: str) -> str:
    """``url`` without user info, query or fragment (what may be written to a report or an error)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON through a sibling temporary file and os.replace, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class AnswerCache:
    """One JSON file per answer, ``<folder>/<key[:2]>/<key>.json``, written atomically (a kill loses at most
    the answers in flight). The file holds the key's material (hashes, prompt, model, settings) and the answer."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    @staticmethod
    def key(material: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        answer = entry.get("answer") if isinstance(entry, dict) else None
        return answer if isinstance(answer, str) else None

    def put(self, key: str, material: dict[str, Any], answer: str) -> None:
        write_json_atomic(self._path(key), {"request": material, "answer": answer})


class ChatClient:
    """Chat completions against ``{api_base}/chat/completions`` with retries and the answer cache.

    Thread-safe; the concurrency bound is the caller's pool size (:func:`run_items`). Counters: ``requests``
    (HTTP requests sent, retries included), ``cache_hits``, ``retries``, ``failed_requests``.
    """

    def __init__(self, endpoint: Endpoint):
        if not endpoint.cache_dir:
            raise ValueError("Endpoint.cache_dir is not set")
        self.endpoint = endpoint
        self.url = endpoint.api_base.rstrip("/") + "/chat/completions"
        self._key = os.environ.get(endpoint.api_key_env, "")
        self.cache = AnswerCache(endpoint.cache_dir)
        self.counts = {"requests": 0, "cache_hits": 0, "retries": 0, "failed_requests": 0}
        self._lock = threading.Lock()
        self._fatal: str | None = None   # once the endpoint refused us, no further request is sent
        self._reached = False            # an HTTP answer (any status) came back at least once

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def ask(self, prompt: str, settings: dict[str, Any], *, image: bytes | None = None,
            mime: str = "image/png", sample: int = 0) -> str:
        """The answer text to one user message (``prompt``, plus ``image`` for a vision request).

        ``sample`` tells apart repeated samples of the same request (the candidates of one image)."""
        material = {"model": self.endpoint.model, "prompt": prompt, "settings": settings, "sample": sample,
                    "image_sha256": hashlib.sha256(image).hexdigest() if image is not None else None}
        key = AnswerCache.key(material)
        cached = self.cache.get(key)
        if cached is not None:
            self._count("cache_hits")
            return cached
        if self._fatal:
            raise EndpointFatal(self._fatal)
        content: Any = prompt
        if image is not None:
            url = f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"
            content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}]
        payload = {"model": self.endpoint.model, "messages": [{"role": "user", "content": content}], **settings}
        answer = self._post(json.dumps(payload).encode("utf-8"))
        self.cache.put(key, material, answer)
        return answer

    def _post(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        attempts = self.endpoint.max_retries + 1
        for attempt in range(attempts):
            self._count("requests")
            retry_after = None
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.endpoint.request_timeout) as response:
                    self._reached = True
                    return self._answer(response.read())
            except urllib.error.HTTPError as exc:
                self._reached = True
                detail = self.scrub(exc.read()[:300].decode("utf-8", "replace").strip())
                error = f"HTTP {exc.code} from {public_url(self.url)}: {detail}"
                if exc.code in FATAL_STATUS:
                    self._fatal = f"{error} (check --api_base, --model and ${self.endpoint.api_key_env})"
                    raise EndpointFatal(self._fatal) from None
                if exc.code not in TRANSIENT_STATUS:
                    self._count("failed_requests")
                    raise RequestFailed(error) from None
                retry_after = exc.headers.get("Retry-After")
            except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as exc:
                error = self.scrub(f"{type(exc).__name__} from {public_url(self.url)}: {exc}")
            if attempt + 1 == attempts:
                self._count("failed_requests")
                if not self._reached:   # never reached at all: a wrong URL or a server that is down
                    self._fatal = f"cannot reach the endpoint: {error} (after {attempts} attempts; check --api_base)"
                    raise EndpointFatal(self._fatal)
                raise RequestFailed(f"{error} (gave up after {attempts} attempts)")
            self._count("retries")
            time.sleep(self._delay(attempt, retry_after))
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = self.endpoint.retry_backoff * (2 ** attempt) * (1 + 0.25 * random.random())
        try:
            delay = max(delay, float(retry_after)) if retry_after else delay
        except ValueError:  # an HTTP-date Retry-After: keep the exponential delay
            pass
        return min(delay, MAX_DELAY_S)

    def _answer(self, raw: bytes) -> str:
        try:
            data = json.loads(raw.decode("utf-8"))
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            self._count("failed_requests")
            raise RequestFailed(f"{public_url(self.url)} answered without choices[0].message.content: "
                                f"{self.scrub(raw[:200].decode('utf-8', 'replace'))!r}") from None
        if not isinstance(content, str):
            self._count("failed_requests")
            raise RequestFailed(f"{public_url(self.url)} answered with non-text content {type(content).__name__}")
        return content.strip()


def run_items(items: Sequence[Any], work: Callable[[Any], Any], *, names: Sequence[str], concurrency: int,
              client: ChatClient | None = None, desc: str = "images", quiet: bool = False,
              checkpoint: Callable[[dict, dict], None] | None = None, checkpoint_every: int = 50,
              ) -> tuple[dict[int, Any], dict[int, str]]:
    """``work(item)`` for every item on ``concurrency`` threads; returns ({index: result}, {index: error}).

    :class:`RequestFailed` and ``ValueError`` (an unreadable file) fail that item only: its error, prefixed with
    its name, is returned. :class:`EndpointFatal` stops the run (after a last checkpoint) and propagates.
    ``checkpoint(results, failures)`` is called every ``checkpoint_every`` finished items.
    """
    from tqdm.auto import tqdm

    results: dict[int, Any] = {}
    failures: dict[int, str] = {}
    bar = tqdm(total=len(items), desc=desc, unit="image", disable=quiet)
    pool = cf.ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        futures = {pool.submit(work, item): i for i, item in enumerate(items)}
        for done, future in enumerate(cf.as_completed(futures), start=1):
            i = futures[future]
            try:
                results[i] = future.result()
            except EndpointFatal:
                raise
            except (RequestFailed, ValueError) as exc:
                failures[i] = f"{names[i]}: {client.scrub(str(exc)) if client else exc}"
            bar.update(1)
            if client is not None:
                bar.set_postfix({"requests": client.counts["requests"], "cache_hits": client.counts["cache_hits"],
                                 "failed": len(failures)}, refresh=False)
            if checkpoint is not None and checkpoint_every > 0 and done % checkpoint_every == 0:
                checkpoint(results, failures)
    except EndpointFatal:
        if checkpoint is not None:
            checkpoint(results, failures)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return results, failures


def add_endpoint_args(parser: argparse.ArgumentParser, title: str = "language-model endpoint") -> None:
    """The endpoint flags shared by ``describe`` and ``annotate --llm_fields``."""
    g = parser.add_argument_group(f"{title} (OpenAI-compatible chat completions) and run")
    g.add_argument("--api_base", default=None,
                   help="base URL of the API, e.g. http://127.0.0.1:8000/v1; if not given, $OPENAI_API_BASE")
    g.add_argument("--model", default=None, help="model name sent with each request; if not given, $OPENAI_MODEL")
    g.add_argument("--api_key_env", default="OPENAI_API_KEY",
                   help="name of the environment variable holding the API key (sent as a Bearer token; unset: "
                        "no Authorization header, as local servers need); the key is never written anywhere")
    g.add_argument("--concurrency", type=int, default=4, help="requests in flight at most")
    g.add_argument("--max_retries", type=int, default=5,
                   help="retries of a request after a transient error (429, 5xx, timeout, lost connection)")
    g.add_argument("--retry_backoff", type=float, default=1.0,
                   help="first retry delay in seconds, doubled at each retry (Retry-After honoured, max 60 s)")
    g.add_argument("--request_timeout", type=float, default=120.0, help="seconds to wait for one answer")
    g.add_argument("--llm_cache_dir", default=None,
                   help="answer cache (resume, free re-runs); if not given, llm_cache/ beside the output file")
    g.add_argument("--checkpoint_every", type=int, default=50,
                   help="write the records done so far to <stem>.partial.json every N images")


def endpoint_from_args(args: argparse.Namespace) -> Endpoint:
    """An Endpoint from the parsed flags; a missing URL or model is a clear error."""
    api_base = args.api_base or os.environ.get("OPENAI_API_BASE")
    model = args.model or os.environ.get("OPENAI_MODEL")
    if not api_base or not model:
        raise ValueError("the language-model step needs --api_base (or $OPENAI_API_BASE) and --model "
                         "(or $OPENAI_MODEL)")
    if args.concurrency < 1 or args.max_retries < 0:
        raise ValueError("--concurrency must be >= 1 and --max_retries >= 0")
    cache = args.llm_cache_dir or str(Path(args.output).resolve().parent / "llm_cache")
    return Endpoint(api_base=api_base, model=model, api_key_env=args.api_key_env, concurrency=args.concurrency,
                    max_retries=args.max_retries, retry_backoff=args.retry_backoff,
                    request_timeout=args.request_timeout, cache_dir=cache)
