"""Who may talk to the studio's server: the password (`--auth`, `--auth-file`, `$STUDIO_AUTH`), the Host names
it answers to, the Origins allowed on its API, and throttled logins. A starlette middleware passed to gradio's
launch (`app_kwargs={"middleware": [...]}`): gradio 6.31 has no Host allowlist, and its `strict_cors` covers
only the Host names localhost and 127.0.0.1.
"""
from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import stat
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocketClose


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname we would have to resolve: treat it as reachable from outside


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    if not auth:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth must look like user:password (both parts non-empty).")
    return user, password


def resolve_auth(auth: str | None, auth_file: str | None) -> tuple[tuple[str, str] | None, str]:
    """(user, password) or None, and where it came from: --auth, else --auth-file, else $STUDIO_AUTH."""
    if auth and auth_file:
        raise ValueError("Give --auth or --auth-file, not both.")
    if auth:
        return parse_auth(auth), "--auth"
    if auth_file:
        path = Path(auth_file).expanduser()
        try:
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--auth-file {path}: cannot read it ({e}).") from e
        if len(lines) != 1:
            raise ValueError(f"--auth-file {path} must hold exactly one line user:password (it has {len(lines)}).")
        try:
            creds = parse_auth(lines[0])
        except ValueError:
            raise ValueError(f"--auth-file {path}: its line must look like user:password.") from None
        mode = path.stat().st_mode
        if os.name == "posix" and mode & 0o077:  # warn, not refuse: docker and k8s secrets are mounted 0444/0644
            print(f"warning: {path} can be read by other users (mode {stat.filemode(mode)}): chmod 600 {path}",
                  file=sys.stderr)
        return creds, f"--auth-file {path}"
    env = os.environ.get("STUDIO_AUTH", "")
    if env:
        try:
            return parse_auth(env), "STUDIO_AUTH"
        except ValueError:
            raise ValueError("STUDIO_AUTH must look like user:password (both parts non-empty).") from None
    return None, ""


# --- who may talk to the server ------------------------------------------------------------------

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


# A bare host[:port]: a name, an IPv4 address or a bracketed IPv6 one, and an optional port. Nothing else: urlsplit
# would read 'evil.com@localhost' as user 'evil.com' at 'localhost', and a browser never sends userinfo, a path or a
# query in Host or Origin.
_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<name>[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?))"
                   r"(?::(?P<port>\d{1,5}))?")
_ORIGIN = re.compile(r"(?P<scheme>[A-Za-z]+)://(?P<host>[^/?#@]+)")
DEFAULT_PORTS = {"http": 80, "https": 443}


def split_host(value: str | None) -> tuple[str, int | None] | None:
    """'127.0.0.1:7860' -> ('127.0.0.1', 7860), '[::1]' -> ('::1', None), 'A.lan.' -> ('a.lan', None); None for
    anything but a bare host[:port] (userinfo, a path, a bad port 0 or over 65535, an IPv6 address out of brackets)."""
    m = _HOST.fullmatch(value or "")
    if not m:
        return None
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        return None
    if m["v6"]:
        try:
            return str(ipaddress.IPv6Address(m["v6"])), port
        except ValueError:
            return None
    name = m["name"].rstrip(".").lower()
    return (name, port) if len(name) <= 253 else None


def split_origin(value: str | None) -> tuple[str, str, int] | None:
    """'http://localhost' -> ('http', 'localhost', 80): scheme, host and port (the scheme's default when not written);
    None for 'null', another scheme, or anything after the port."""
    m = _ORIGIN.fullmatch(value or "")
    scheme = m["scheme"].lower() if m else ""
    hp = split_host(m["host"]) if scheme in DEFAULT_PORTS else None
    return (scheme, hp[0], hp[1] or DEFAULT_PORTS[scheme]) if hp else None


def shown_names(names) -> str:
    return ", ".join(f"[{n}]" if ":" in n else n for n in sorted(names))


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class LoginThrottle:
    """Failed logins per client address within a sliding window; beyond the limit, /login answers 429 unchecked.

    An attempt counts as a failure from the moment it starts (so a burst of parallel guesses cannot slip through
    before the first answer) and is forgotten, with the client's earlier failures, when it succeeds. The client is
    the TCP peer: X-Forwarded-For is believed only from a configured proxy (studio.ui.app.trust_proxies), so one
    machine cannot rotate made-up addresses past `per_client`. `overall` caps all clients together against a
    guesser with many real addresses (20 a minute: 4 of them can hold the owner off for that minute).
    """

    def __init__(self, per_client: int = 5, overall: int = 20, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.per_client, self.overall, self.window_s, self.clock = per_client, overall, window_s, clock
        self.failures: dict[str, deque[float]] = {}

    def _prune(self, now: float) -> None:
        for client in list(self.failures):
            q = self.failures[client]
            while q and q[0] <= now - self.window_s:
                q.popleft()
            if not q:
                del self.failures[client]

    def wait_s(self, client: str) -> float:
        """0 when the client may try now, else the seconds until it may."""
        now = self.clock()
        self._prune(now)
        mine = self.failures.get(client)
        if mine and len(mine) >= self.per_client:
            return mine[-self.per_client] + self.window_s - now
        if sum(len(q) for q in self.failures.values()) >= self.overall:
            return min(q[0] for q in self.failures.values()) + self.window_s - now
        return 0.0

    def begin(self, client: str) -> None:
        self.failures.setdefault(client, deque()).append(self.clock())

    def succeeded(self, client: str) -> None:
        self.failures.pop(client, None)


class RequestGuard:
    """ASGI middleware in front of gradio's routes (added through `launch(app_kwargs={"middleware": ...})`).

    1. Host: a bare host[:port] naming a loopback name, the --host given or an --allowed-hosts name (or any IP
       address when bound to 0.0.0.0/::, since an address cannot be rebound; '*' allows every name). A
       DNS-rebinding page sends its own name here, so it gets 400 before any route runs.
    2. Origin: when a request carries one, it must be the same origin (scheme, host and port) as a page this studio
       serves: the request's own origin, one of its names on the port it listens on, or an origin given with
       --allowed-hosts (`origins`); 403 otherwise, so neither a foreign page nor another local server's page (say
       a notebook on localhost:8888) reaches the API. (gradio's CORS layer sits outside this one and may still
       stamp Access-Control-Allow-Origin on that 403 when Host is not localhost/127.0.0.1: the body is one
       sentence.)
    3. POST /login: `LoginThrottle`; 429 with Retry-After once a client has failed too often.
    """

    def __init__(self, app, names: frozenset[str], any_ip: bool = False, any_host: bool = False,
                 throttle: LoginThrottle | None = None, origins: frozenset[tuple[str, str, int]] = frozenset()):
        self.app, self.names, self.any_ip, self.any_host, self.throttle = app, names, any_ip, any_host, throttle
        self.origins = origins

    def host_ok(self, name: str | None) -> bool:
        return bool(name) and (self.any_host or name in self.names or (self.any_ip and _is_ip(name)))

    def origin_ok(self, origin: str, host: tuple[str, int | None], scope) -> bool:
        o = split_origin(origin)
        if o is None:
            return False
        if o in self.origins:
            return True
        scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme"), scope.get("scheme") or "http")
        own_port = (scope.get("server") or (None, None))[1]
        mine = (scheme, host[0], host[1] or DEFAULT_PORTS.get(scheme))  # what the browser asked for
        return o[0] == scheme and (o == mine or (o[1] in self.names and o[2] == own_port))

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = split_host(headers.get("host"))
        if host is None or not self.host_ok(host[0]):
            return await self._refuse(scope, receive, send, 400,
                                      f"Host {headers.get('host', '')[:100]!r} is not allowed. QLoRA Studio answers "
                                      f"to {shown_names(self.names)}; add a name with --allowed-hosts (or "
                                      f"STUDIO_ALLOWED_HOSTS).")
        origin = headers.get("origin")
        if origin is not None and not self.origin_ok(origin, host, scope):
            return await self._refuse(scope, receive, send, 403,
                                      f"Origin {origin[:100]!r} is not allowed: only pages served by this studio "
                                      f"(same scheme, host and port) may call its API; allow another origin with "
                                      f"--allowed-hosts, e.g. https://proxy.lan.")
        if self.throttle and scope["type"] == "http" and scope["method"] == "POST" and \
                scope["path"] in ("/login", "/login/"):
            return await self._login(scope, receive, send)
        await self.app(scope, receive, send)

    async def _login(self, scope, receive, send):
        client = (scope.get("client") or ("?",))[0]
        wait = self.throttle.wait_s(client)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            return await PlainTextResponse(f"Too many failed logins: try again in {seconds} s.", 429,
                                           headers={"Retry-After": str(seconds)})(scope, receive, send)
        self.throttle.begin(client)

        async def watch(message):
            if message["type"] == "http.response.start" and message["status"] == 200:
                self.throttle.succeeded(client)
            await send(message)

        await self.app(scope, receive, watch)

    @staticmethod
    async def _refuse(scope, receive, send, status: int, text: str):
        if scope["type"] == "websocket":
            return await WebSocketClose(code=1008, reason=text[:120])(scope, receive, send)  # 1008: policy
        await PlainTextResponse(text, status)(scope, receive, send)


def allowed_entries(allowed_hosts: str | None) -> tuple[set[str], set[tuple[str, str, int]], bool]:
    """--allowed-hosts 'a.lan, b.lan:8443, https://c.lan, *' -> (Host names, origins, any name): a bare name adds a
    Host name (its pages on the studio's own port are then same-origin); a port or a scheme also allows that
    origin (no scheme: http and https). ValueError names an entry that is none of these."""
    names, origins, any_host = set(), set(), False
    for item in (x.strip() for x in (allowed_hosts or "").split(",")):
        if item == "*":
            any_host = True
        elif "://" in item and split_origin(item):
            origin = split_origin(item)
            names.add(origin[1])
            origins.add(origin)
        elif item and "://" not in item and split_host(item):
            name, port = split_host(item)
            names.add(name)
            origins.update({("http", name, port), ("https", name, port)} if port else ())
        elif item:
            raise ValueError(f"--allowed-hosts entry {item[:100]!r} is not a host name, host:port or "
                             f"http(s)://host[:port]: correct it (several are separated by commas).")
    return names, origins, any_host


def request_guard(host: str, allowed_hosts: str | None, throttle: bool) -> Middleware:
    """The guard for a server bound to `host`; `allowed_hosts` is 'a.lan,b.lan' ('*' = any name, see
    `allowed_entries`). ValueError for an entry that is not a host or an origin."""
    extra, origins, any_host = allowed_entries(allowed_hosts)
    names = set(LOOPBACK_NAMES) | extra
    bound = host.strip().strip("[]").lower()
    wildcard = bound in WILDCARD_HOSTS
    if wildcard:
        names.add(socket.gethostname().lower())  # how the LAN usually names this machine
    else:
        names.add(bound)
    return Middleware(RequestGuard, names=frozenset(names), any_ip=wildcard, any_host=any_host,
                      throttle=LoginThrottle() if throttle else None, origins=frozenset(origins))
