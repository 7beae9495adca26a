"""A small Hugging Face Hub stand-in on 127.0.0.1 for download tests: no internet needed.

It answers what `hf_hub_download` asks (huggingface_hub 2.x, and the 0.x line alike):

- `HEAD|GET /{org}/{name}/resolve/{revision}/{path}` with `X-Repo-Commit`, an `ETag` (the git blob hash of
  a small file; for an LFS file (.bin .pth .safetensors) its SHA-256, also as `X-Linked-Etag` with
  `X-Linked-Size`), `Content-Length`, and `206 Partial Content` for a `Range: bytes=N-` request;
- `GET /files/{name}`: plain files (the `--eval` mirror), with Range too.

Faults to inject: cut the connection once after N bytes of a file (`cut_once`), refuse the requests for a
file with 503 (`refuse`), declare a wrong checksum (`wrong_sha256`), declare a hostile ETag or commit of
its choosing (`etags`, `commits`: `../` steps, a word), optionally only after answering the first N
requests for the file honestly (`honest_requests`). Every request is recorded.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".bin", ".pth", ".safetensors", ".model")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-$")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None  # the Range header, when sent


@dataclass
class HubState:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo id -> path -> content
    files: dict[str, bytes] = field(default_factory=dict)  # /files/NAME
    cut_once: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the one cut
    refuse: set[str] = field(default_factory=set)  # paths answered with 503
    refuse_after_cut: set[str] = field(default_factory=set)  # paths put into `refuse` by their cut
    wrong_sha256: set[str] = field(default_factory=set)  # paths declared with a wrong checksum
    etags: dict[str, str] = field(default_factory=dict)  # path -> the ETag (and X-Linked-Etag) declared
    commits: dict[str, str] = field(default_factory=dict)  # path -> the X-Repo-Commit declared
    honest_requests: dict[str, int] = field(default_factory=dict)  # path -> requests answered truly first
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, suffix: str = "") -> list[Request]:
        """The GET requests for files (transfers) whose path ends with `suffix`."""
        with self.lock:
            return [
                r for r in self.requests if r.method == "GET" and _is_file(r.path) and r.path.endswith(suffix)
            ]


def _is_file(path: str) -> bool:
    """A file's address (huggingface_hub also asks the /api for things of its own)."""
    return bool(_RESOLVE.match(path)) or path.startswith("/files/")


def _hub_key(path: str) -> str | None:
    """ "{org}/{name}/{path}" of a Hub file's address."""
    match = _RESOLVE.match(path.split("?", 1)[0])
    return f"{match.group('repo')}/{match.group('path')}" if match else None


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(f"blob {len(content)}\0".encode() + content).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState  # set on the subclass each server makes

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        state = self.state
        with state.lock:
            state.requests.append(Request(self.command, self.path, self.headers.get("Range")))
        found = self._find()
        if found is None:
            self._empty(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
            return
        key, content, hub = found
        if key in state.refuse:
            self._empty(503, {})
            return
        headers = {"Accept-Ranges": "bytes"}
        if hub:
            headers["X-Repo-Commit"] = COMMIT
            if key.endswith(LFS_SUFFIXES):
                sha = hashlib.sha256(content).hexdigest()
                if key in state.wrong_sha256:
                    sha = hashlib.sha256(b"something else").hexdigest()
                headers |= {
                    "ETag": f'"{sha}"',
                    "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(len(content)),
                }
            else:
                headers["ETag"] = f'"{git_blob_sha1(content)}"'
            with state.lock:
                seen = sum(1 for r in state.requests if _hub_key(r.path) == key)
            if seen > state.honest_requests.get(key, 0):
                if key in state.etags:
                    headers["ETag"] = f'"{state.etags[key]}"'
                    if "X-Linked-Etag" in headers:
                        headers["X-Linked-Etag"] = headers["ETag"]
                if key in state.commits:
                    headers["X-Repo-Commit"] = state.commits[key]
        start = 0
        match = _RANGE.match(self.headers.get("Range") or "")
        if match and body:
            start = int(match.group(1))
            if start >= len(content):
                self._empty(416, {"Content-Range": f"bytes */{len(content)}"})
                return
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        self.send_response(206 if start or (match and body) else 200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content) - start))
        self.end_headers()
        if not body:
            return
        with state.lock:
            cut = state.cut_once.pop(key, None)
            if cut is not None and key in state.refuse_after_cut:
                state.refuse.add(key)
        if cut is not None and cut > start:
            self.wfile.write(content[start:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(content[start:])

    def _find(self) -> tuple[str, bytes, bool] | None:
        """(key for faults, content, whether it is a Hub file)."""
        path = self.path.split("?", 1)[0]
        match = _RESOLVE.match(path)
        if match:
            repo = self.state.repos.get(match.group("repo"))
            if repo is None or match.group("revision") not in ("main", COMMIT):
                return None
            content = repo.get(match.group("path"))
            return (
                None if content is None else (f"{match.group('repo')}/{match.group('path')}", content, True)
            )
        if path.startswith("/files/"):
            name = path[len("/files/") :]
            content = self.state.files.get(name)
            return None if content is None else (name, content, False)
        return None

    def _empty(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


class HubServer:
    """`with HubServer(state) as server:` serves on `server.url` until the block ends."""

    def __init__(self, state: HubState) -> None:
        handler = type("Handler", (_Handler,), {"state": state})
        self.state = state
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
