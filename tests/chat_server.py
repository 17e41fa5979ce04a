"""A chat-completions server on 127.0.0.1 for the tests of the language-model steps.

It speaks the OpenAI chat-completions API over real HTTP (``http.server`` in a thread), answers from a script
(a function of the request), records every request (prompt, image hash, Authorization header) and the highest
number of requests in flight, and shuts itself down after ``limit_s`` seconds if a test forgets to.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    prompt: str
    image_sha256: str | None
    body: dict
    authorization: str | None


def parse_request(body: dict) -> tuple[str, str | None]:
    """(prompt text, sha256 of the image bytes or None) of a chat request with one user message."""
    content = body["messages"][0]["content"]
    if isinstance(content, str):
        return content, None
    text = next(part["text"] for part in content if part["type"] == "text")
    url = next(part["image_url"]["url"] for part in content if part["type"] == "image_url")
    data = base64.b64decode(url.split(",", 1)[1])
    return text, hashlib.sha256(data).hexdigest()


class ChatServer:
    """``answer(request) -> (status, text)``; status 200 answers ``text`` as the assistant message."""

    def __init__(self, answer: Callable[[Request], tuple[int, str]], *, delay: float = 0.0, limit_s: float = 300):
        self.answer, self.delay = answer, delay
        self.requests: list[Request] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopped = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                prompt, image = parse_request(body)
                req = Request(prompt, image, body, self.headers.get("Authorization"))
                with server._lock:
                    server.requests.append(req)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay)
                    status, text = server.answer(req)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                if status != 200:
                    return self._send(status, {"error": {"message": text}})
                self._send(200, {"id": "chatcmpl-test", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}]})

            def _send(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client was killed mid-request
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._timer = threading.Timer(limit_s, self.stop)
        self._timer.daemon = True

    def __enter__(self) -> ChatServer:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, predicate: Callable[[Request], bool] = lambda r: True) -> int:
        with self._lock:
            return sum(1 for r in self.requests if predicate(r))
