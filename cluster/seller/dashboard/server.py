"""The dashboard's HTTP server: stdlib, on 127.0.0.1 only, one token.

Whoever can reach 127.0.0.1 on a seller's box is not necessarily the seller (other users,
a web page in the seller's own browser), so every request needs the token kept in the
state dir (0600): `computeswarm seller dashboard` prints a link that trades it for a
cookie (HttpOnly, SameSite=Strict: another site's page cannot send it). A Host other
than the dashboard's own is refused (DNS rebinding), and so is a cross-origin write.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import socket
import threading
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from computeswarm.cluster.errors import ApiError, CoordinatorUnreachable
from computeswarm.cluster.seller.dashboard.state import BadPrice, Box, set_price, snapshot

log = logging.getLogger("computeswarm.dashboard")
TOKEN_FILE = "dashboard-token"
DASHBOARD_FILE = "dashboard.json"
DEFAULT_PORT = 7878
COOKIE = "cs_seller"
MAX_BODY = 4096
PAGES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript")}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'unsafe-inline';"
    " connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def token(state_dir: Path) -> str:
    """The dashboard's token, made on first use, readable by the seller only."""
    path = state_dir / TOKEN_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


FALLBACK_PORTS = range(DEFAULT_PORT + 1, DEFAULT_PORT + 100)


def listen(port: int = DEFAULT_PORT) -> socket.socket:
    """127.0.0.1:`port` (0: the kernel's choice), or the next free one of FALLBACK_PORTS
    when it is taken (several sellers on one testbed host): the URL in the state dir says
    which. Never the kernel's pick as a fallback: its ephemeral range holds the Ray nodes'
    port blocks, and a seller's node then failed to start on a port its dashboard held."""
    for candidate in dict.fromkeys((port, *FALLBACK_PORTS)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", candidate))
        except OSError:
            sock.close()
            log.warning("127.0.0.1:%s is taken; the dashboard tries the next port", candidate)
            continue
        sock.listen(16)
        return sock
    raise OSError(
        f"127.0.0.1:{port} and {FALLBACK_PORTS.start}-{FALLBACK_PORTS.stop - 1} are taken"
    )


def login_url(state_dir: Path) -> str | None:
    """The link that opens the running dashboard, or None when none runs."""
    try:
        url = json.loads((state_dir / DASHBOARD_FILE).read_text())["url"]
    except (OSError, ValueError, KeyError):
        return None
    return f"{url}login?token={token(state_dir)}"


class Dashboard:
    """Serves `box` on `sock` (already bound: the agent's launcher binds it in the box's
    own namespace and hands it over) in a daemon thread."""

    def __init__(self, box: Box, sock: socket.socket):
        self.box = box
        self.token = token(box.state_dir)
        port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/"
        self.hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
        self.origins = {f"http://{h}" for h in self.hosts}
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self), False)
        self.server.socket.close()  # the one it made unbound: ours is bound already
        self.server.socket = sock
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Dashboard:
        self._thread.start()
        tmp = self.box.state_dir / (DASHBOARD_FILE + ".tmp")
        tmp.write_text(json.dumps({"url": self.url, "pid": os.getpid()}))
        tmp.replace(self.box.state_dir / DASHBOARD_FILE)
        log.info("seller dashboard on %s (computeswarm seller dashboard opens it)", self.url)
        return self

    def stop(self) -> None:
        (self.box.state_dir / DASHBOARD_FILE).unlink(missing_ok=True)
        self.server.shutdown()
        self.server.server_close()

    def allows(self, headers, cookie_only: bool = False) -> bool:
        cookie = SimpleCookie(headers.get("Cookie", "")).get(COOKIE)
        given = cookie.value if cookie else ""
        if not given and not cookie_only:
            given = headers.get("Authorization", "").removeprefix("Bearer ")
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())


def _handler(dashboard: Dashboard):
    class Handler(BaseHTTPRequestHandler):
        server_version = "computeswarm-seller"

        def do_GET(self) -> None:
            if not self._host_ok():
                return
            url = urlsplit(self.path)
            if url.path == "/login":
                given = parse_qs(url.query).get("token", [""])[0]
                if not hmac.compare_digest(given.encode(), dashboard.token.encode()):
                    return self._send(HTTPStatus.UNAUTHORIZED, {"error": "wrong token"})
                cookie = f"{COOKIE}={given}; HttpOnly; SameSite=Strict; Path=/"
                return self._send(
                    HTTPStatus.SEE_OTHER, b"", headers={"Location": "/", "Set-Cookie": cookie}
                )
            if not dashboard.allows(self.headers):
                return self._refuse()
            if url.path == "/api/state":
                return self._send(HTTPStatus.OK, snapshot(dashboard.box))
            if url.path in PAGES:
                name, kind = PAGES[url.path]
                body = resources.files(__package__).joinpath(name).read_bytes()
                return self._send(HTTPStatus.OK, body, kind)
            self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})

        def do_POST(self) -> None:
            if not self._host_ok():
                return
            origin = self.headers.get("Origin")
            if origin is not None and origin not in dashboard.origins:
                return self._send(HTTPStatus.FORBIDDEN, {"error": "cross-origin request"})
            if not dashboard.allows(self.headers):
                return self._refuse()
            if urlsplit(self.path).path != "/api/price":
                return self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})
            length = int(self.headers.get("Content-Length") or 0)
            if self.headers.get_content_type() != "application/json" or not 0 < length <= MAX_BODY:
                return self._send(HTTPStatus.BAD_REQUEST, {"error": "a small JSON body, please"})
            try:
                price = json.loads(self.rfile.read(length)).get("price")
                offer = set_price(dashboard.box, price)
            except (ValueError, AttributeError, BadPrice) as e:
                return self._send(HTTPStatus.BAD_REQUEST, {"error": str(e)})
            except (ApiError, CoordinatorUnreachable) as e:
                return self._send(HTTPStatus.BAD_GATEWAY, {"error": str(e)})
            self._send(HTTPStatus.OK, {"offer": offer})

        def _host_ok(self) -> bool:
            if self.headers.get("Host") in dashboard.hosts:
                return True
            self._send(HTTPStatus.FORBIDDEN, {"error": "this dashboard answers on 127.0.0.1 only"})
            return False

        def _refuse(self) -> None:
            self._send(
                HTTPStatus.UNAUTHORIZED,
                {"error": "no token: `computeswarm seller dashboard` prints the link"},
            )

        def _send(self, status, body, kind: str = "application/json", headers=None) -> None:
            data = json.dumps(body).encode() if isinstance(body, dict) else body
            self.send_response(status)
            for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:
            log.debug("%s " + format, self.client_address[0], *args)

    return Handler
