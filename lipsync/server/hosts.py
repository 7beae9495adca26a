"""Which host names `lipsync serve` answers to, and which web pages may call it.

A server on 127.0.0.1 without a token trusts whoever can reach the port. A web page on any site can reach
it too, two ways: by DNS rebinding (the page's own host name is made to resolve to 127.0.0.1, so the
browser sends `Host: attacker.example`), and by cross-site requests the browser sends without asking
(a form POST, a `text/plain` fetch, a WebSocket). So:

- without a token, a request must name a loopback host (127.0.0.1, localhost, [::1], any port) or a name
  the user allowed (`serve --allow-host NAME`, for a reverse proxy); with a token, the token decides;
- a request from a web page (it carries `Origin`) to the API or the WebSocket must come from this server's
  own pages (the `Origin` names the same host and port as `Host`) or from an allowed host name.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from lipsync.errors import LipsyncError
from lipsync.server.protocol import CloseCode

LOOPBACK_NAMES = frozenset({"localhost"})
DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
GUARDED_PREFIXES = ("/api/", "/ws/")  # routes that hold or change data; the pages themselves hold none
FORBIDDEN = 403
# A host name or address as a user may allow it: letters, digits, dots, dashes, underscores, IPv6 colons.
HOST_NAME = re.compile(r"^[a-z0-9_.\-]+$|^[0-9a-f:.]+$")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and "localhost" are reachable from this machine only."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, int | None]:
    """The name and port of a `Host` header or URL authority: "[::1]:80" -> ("::1", 80)."""
    value = value.strip().lower()
    port: str | None = None
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif value.count(":") == 1:
        name, port = value.split(":")
    else:
        name = value  # no port, or a bare IPv6 address
    name = name.rstrip(".")
    if port is None or port == "":
        return name, None
    return name, int(port) if port.isdigit() else -1


def normalize_allowed(name: str) -> str:
    """An --allow-host value as compared with requests (lower case, no port, no brackets), or LipsyncError."""
    host, port = split_host(name)
    if not host or port == -1 or not HOST_NAME.match(host):
        raise LipsyncError(
            f"--allow-host {name!r} is not a host name",
            "give the bare name clients use to reach the server, e.g. --allow-host lipsync.example.org "
            "(no scheme, no path)",
        )
    return host


class HostRefused(LipsyncError):
    """A request for a host name the server does not answer to, or from a web page it does not trust."""


class HostRules:
    """The host and origin rules of one server: `check(host, origin, path)` raises HostRefused."""

    def __init__(self, token: str | None, allowed_hosts: Iterable[str]) -> None:
        self.token = token
        self.allowed = frozenset(normalize_allowed(name) for name in allowed_hosts)

    def _host_allowed(self, name: str) -> bool:
        return is_loopback(name) or name in self.allowed

    def check(self, host: str | None, origin: str | None, path: str) -> None:
        if self.token is None:
            name = split_host(host or "")[0]
            if not name or not self._host_allowed(name):
                raise HostRefused(
                    f"this server answers to loopback host names only, not {host or '(no Host header)'!r}",
                    "open it as http://127.0.0.1:PORT/ or http://localhost:PORT/; to reach it through a "
                    "reverse proxy or by another name, start it with --allow-host NAME (and a --token "
                    "when others can reach it)",
                )
        if (
            origin is not None
            and path.startswith(GUARDED_PREFIXES)
            and not self._origin_allowed(host, origin)
        ):
            raise HostRefused(
                f"requests from the web page at {origin} are refused: it is not a page of this server",
                "use the pages this server serves (/ and /dub), or start the server with --allow-host "
                "NAME for the host name of the page that calls it",
            )

    def _origin_allowed(self, host: str | None, origin: str) -> bool:
        parts = urlsplit(origin.strip().lower())
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            return False  # "null" (a file or a sandboxed frame), or something that is no web origin
        try:
            origin_port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            return False
        origin_name = parts.hostname.rstrip(".")
        if origin_name in self.allowed:
            return True
        name, port = split_host(host or "")
        return name == origin_name and (port or DEFAULT_PORTS[parts.scheme]) == origin_port


class HostGuard:
    """ASGI middleware applying HostRules to every HTTP request and WebSocket."""

    def __init__(self, app: ASGIApp, rules: HostRules) -> None:
        self.app = app
        self.rules = rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        try:
            self.rules.check(headers.get("host"), headers.get("origin"), scope["path"])
        except HostRefused as refused:
            body = {"error": refused.problem, "fix": refused.fix}
            if scope["type"] == "http":
                await _answer(send, body)
            else:
                await _close(receive, send, body)
            return
        await self.app(scope, receive, send)


async def _answer(send: Send, body: dict[str, str]) -> None:
    data = json.dumps(body).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": FORBIDDEN,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _close(receive: Receive, send: Send, body: dict[str, str]) -> None:
    """As every refused session: accept, send the error message, close with the code."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps({"type": "error", **body})})
    await send({"type": "websocket.close", "code": int(CloseCode.FORBIDDEN)})
