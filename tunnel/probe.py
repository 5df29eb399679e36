"""A tiny TCP echo service and client to prove and time reachability across the overlay.

Run as `python -m computeswarm.tunnel.probe serve|rtt|stream ADDR PORT`, often inside a
namespace. `rtt` and `stream` print one JSON line with "ok" and the figures or "error".
"""

from __future__ import annotations

import json
import socket
import socketserver
import statistics
import sys
import time


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve(address: str, port: int) -> None:
    with _Server((address, port), _Echo) as server:
        print(f"echo listening on {address}:{port}", flush=True)
        server.serve_forever()


def rtt(
    address: str, port: int, *, count: int = 5, timeout: float = 3.0, source: str | None = None
) -> dict:
    """Median TCP round trip over `count` echoes, or the error that stopped it."""
    try:
        with socket.create_connection(
            (address, port), timeout=timeout, source_address=(source, 0) if source else None
        ) as s:
            samples = []
            for i in range(count):
                payload = f"ping {i}".encode()
                start = time.perf_counter()
                s.sendall(payload)
                received = b""
                while len(received) < len(payload):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError("connection closed by the echo server")
                    received += chunk
                samples.append((time.perf_counter() - start) * 1000)
        return {"ok": True, "median_ms": round(statistics.median(samples), 3)}
    except OSError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def stream(address: str, port: int, seconds: float, *, interval: float = 0.02) -> dict:
    """Echo continuously over one connection for `seconds`: did traffic keep flowing?

    Reports the longest gap between two answered echoes, so a stall (not only a
    broken connection) shows up.
    """
    echoes, longest, last = 0, 0.0, time.perf_counter()
    try:
        with socket.create_connection((address, port), timeout=5) as s:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                s.sendall(b"x")
                if s.recv(1) != b"x":
                    raise ConnectionError("connection closed by the echo server")
                now = time.perf_counter()
                longest, last, echoes = max(longest, now - last), now, echoes + 1
                time.sleep(interval)
        return {"ok": True, "echoes": echoes, "max_gap_ms": round(longest * 1000, 1)}
    except OSError as e:
        return {"ok": False, "echoes": echoes, "error": f"{type(e).__name__}: {e}"}


def wait_until_listening(address: str, port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((address, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] in ("serve", "rtt", "stream"):
        if argv[0] == "serve":
            serve(argv[1], int(argv[2]))
            return 0
        if argv[0] == "stream":
            result = stream(argv[1], int(argv[2]), float(argv[3]) if len(argv) > 3 else 3.0)
        else:
            result = rtt(argv[1], int(argv[2]), source=argv[3] if len(argv) > 3 else None)
        print(json.dumps(result), flush=True)
        return 0 if result["ok"] else 1
    print(
        "usage: probe serve ADDR PORT | rtt ADDR PORT [SOURCE] | stream ADDR PORT [SECONDS]",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
