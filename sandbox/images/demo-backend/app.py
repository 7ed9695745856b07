#!/usr/bin/env python3
"""demo-backend: the sandbox's demo application, Python 3 standard library only.

A small but real HTTP/1.1 service (keep-alive, Content-Length, chunked SSE) that the opsbook.stack roles
deploy, upgrade, roll back, scrape and break on purpose.

Environment:
    PORT                 listen port (default 8000); HOST listen address (default 0.0.0.0)
    APP_VERSION          version reported by /health, /api/version, /metrics (baked in from build arg VERSION)
    APP_BROKEN           1: /health answers 200 for APP_BROKEN_AFTER seconds (default 3) after start, then 503
    APP_FAIL_RATIO       0..1: probability that a request to /api/* answers 500 (healthy but failing)
    APP_SHUTDOWN_GRACE   seconds in-flight requests may take to finish after SIGTERM (default 10)
    APP_KEEPALIVE_TIMEOUT  seconds an idle keep-alive connection is kept open (default 75)

Endpoints:
    GET  /health                   {"status": "ok", "version": ...} (503 {"status": "fail"} when broken)
    GET  /metrics                  Prometheus text format
    GET  /api/version              {"version", "hostname"}
    GET|POST /api/echo             method, path, query, X-Request-ID, body length, ...
    GET  /api/slow?ms=N            answers after N milliseconds
    GET  /api/fail?code=500        answers with that status
    GET|POST /sse?events=N&interval=0.2   text/event-stream, also at /workflow/v1/chat/completions
                                   and /console-api/chat-message/; the client chooses the length (N events,
                                   one every `interval` seconds), the last one is `event: end`
    GET  /ws/echo                  WebSocket (RFC 6455): echoes text and binary messages, answers pings

SIGTERM/SIGINT: stop accepting, close idle keep-alive connections, let in-flight requests, SSE streams and
WebSocket sessions finish for up to APP_SHUTDOWN_GRACE seconds (keep it below the compose file's
stop_grace_period, after which Docker kills the process). What is still open then is ended cleanly: an SSE
stream gets a final `event: end` with "cut": "shutdown" and the end of its chunked body, a WebSocket session a
close frame 1001 (going away); then exit 0.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import signal
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SSE_PATHS = ("/sse", "/workflow/v1/chat/completions", "/console-api/chat-message/")
WS_PATH = "/ws/echo"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
WS_MAX_MESSAGE = 1024 * 1024
CUT_WAIT_S = 3.0  # after the grace: how long the cut streams and sessions get to say goodbye
MAX_BODY = 10 * 1024 * 1024
_log_lock = threading.Lock()


def _env_float(name: str, default: float, lo: float | None = None, hi: float | None = None) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw.strip() else default
    except ValueError:
        sys.stderr.write(f"demo-backend: ignoring {name}={raw!r} (not a number), using {default}\n")
        value = default
    if lo is not None:
        value = max(lo, value)
    if hi is not None:
        value = min(hi, value)
    return value


@dataclass
class Config:
    version: str = "1.0"
    broken: bool = False
    broken_after: float = 3.0
    fail_ratio: float = 0.0
    shutdown_grace: float = 10.0
    keepalive_timeout: float = 75.0

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            version=os.environ.get("APP_VERSION", "1.0") or "1.0",
            broken=os.environ.get("APP_BROKEN", "0").strip().lower() in ("1", "true", "yes", "on"),
            broken_after=_env_float("APP_BROKEN_AFTER", 3.0, lo=0.0),
            fail_ratio=_env_float("APP_FAIL_RATIO", 0.0, lo=0.0, hi=1.0),
            shutdown_grace=_env_float("APP_SHUTDOWN_GRACE", 10.0, lo=0.0),
            keepalive_timeout=_env_float("APP_KEEPALIVE_TIMEOUT", 75.0, lo=1.0),
        )


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Thread-safe counters and histograms rendered in the Prometheus text exposition format 0.0.4."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.started = time.time()
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._durations: dict[tuple[str, str], list] = {}  # (method, path) -> [bucket counts..., sum, count]
        self.in_flight = 0

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.in_flight -= 1
            key = (method, path, str(status))
            self._requests[key] = self._requests.get(key, 0) + 1
            hist = self._durations.get((method, path))
            if hist is None:
                hist = self._durations[(method, path)] = [0] * len(BUCKETS) + [0.0, 0]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    hist[i] += 1  # per-bucket (non-cumulative) here, cumulated on render
                    break
            hist[-2] += seconds
            hist[-1] += 1

    def render(self) -> str:
        with self._lock:
            requests = sorted(self._requests.items())
            durations = sorted((k, list(v)) for k, v in self._durations.items())
            in_flight = self.in_flight
        out = [
            "# HELP app_info Build information of the demo backend.",
            "# TYPE app_info gauge",
            f'app_info{{version="{_escape_label(self.version)}"}} 1',
            "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.",
            "# TYPE process_start_time_seconds gauge",
            f"process_start_time_seconds {self.started:.3f}",
            "# HELP http_requests_in_flight Requests currently being served.",
            "# TYPE http_requests_in_flight gauge",
            f"http_requests_in_flight {in_flight}",
            "# HELP http_requests_total Total HTTP requests by method, path and status.",
            "# TYPE http_requests_total counter",
        ]
        for (method, path, status), count in requests:
            out.append(
                f'http_requests_total{{method="{_escape_label(method)}",path="{_escape_label(path)}",'
                f'status="{status}"}} {count}'
            )
        out += [
            "# HELP http_request_duration_seconds HTTP request duration in seconds by method and path.",
            "# TYPE http_request_duration_seconds histogram",
        ]
        for (method, path), hist in durations:
            labels = f'method="{_escape_label(method)}",path="{_escape_label(path)}"'
            cumulative = 0
            for i, bound in enumerate(BUCKETS):
                cumulative += hist[i]
                out.append(f'http_request_duration_seconds_bucket{{{labels},le="{bound!r}"}} {cumulative}')
            out.append(f'http_request_duration_seconds_bucket{{{labels},le="+Inf"}} {hist[-1]}')
            out.append(f"http_request_duration_seconds_sum{{{labels}}} {hist[-2]!r}")
            out.append(f"http_request_duration_seconds_count{{{labels}}} {hist[-1]}")
        return "\n".join(out) + "\n"


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-backend"
    server: DemoServer

    def version_string(self) -> str:
        return self.server_version

    # --- connection life cycle (tracked for graceful shutdown) ---------------------------------------

    def setup(self) -> None:
        self.timeout = self.server.config.keepalive_timeout
        super().setup()
        self.server.track(self, "idle")

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self)

    def handle_one_request(self) -> None:
        self.server.track(self, "idle")
        if self.server.draining.is_set():
            self.close_connection = True
            return
        super().handle_one_request()

    def parse_request(self) -> bool:
        # The request line has been read: from here on this connection carries an in-flight request.
        self.server.track(self, "busy")
        self._t0 = time.monotonic()
        self._status = 0
        self._sent = 0
        return super().parse_request()

    # --- logging ---------------------------------------------------------------------------------------

    def log_request(self, code="-", size="-") -> None:  # replaced by access_log()
        pass

    def log_message(self, format: str, *args) -> None:  # errors from the base class go to stderr
        sys.stderr.write(f"demo-backend: {self.address_string()} {format % args}\n")
        sys.stderr.flush()

    def access_log(self, duration: float) -> None:
        line = '{} - - [{}] "{}" {} {} "{}" "{}" rt={:.3f} rid={} v={}\n'.format(
            self.client_address[0],
            time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
            self.requestline.replace('"', "%22"),
            self._status,
            self._sent,
            (self.headers.get("Referer") or "-").replace('"', "%22"),
            (self.headers.get("User-Agent") or "-").replace('"', "%22"),
            duration,
            self.headers.get("X-Request-ID") or "-",
            self.server.config.version,
        )
        with _log_lock:
            sys.stdout.write(line)
            sys.stdout.flush()

    # --- responses -------------------------------------------------------------------------------------

    def _start(self, status: int, headers: dict[str, str]) -> None:
        self._status = status
        self.send_response(status)
        rid = self.headers.get("X-Request-ID")
        if rid:
            headers.setdefault("X-Request-ID", rid)
        if self.server.draining.is_set():
            headers["Connection"] = "close"
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self._start(
            status, {"Content-Type": content_type, "Content-Length": str(len(body)), "Cache-Control": "no-store"}
        )
        if self.command != "HEAD":
            self.wfile.write(body)
            self._sent = len(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, (json.dumps(obj, separators=(",", ":")) + "\n").encode(), "application/json")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks, total = [], 0
            while True:
                size_line = self.rfile.readline(1024)
                if not size_line:
                    raise HTTPError(400, "truncated chunked body")
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise HTTPError(400, "bad chunk size") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise HTTPError(413, "body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            n = int(length)
        except ValueError:
            raise HTTPError(400, "bad Content-Length") from None
        if n < 0:
            raise HTTPError(400, "bad Content-Length")
        if n > MAX_BODY:
            raise HTTPError(413, "body too large")
        return self.rfile.read(n)

    # --- dispatch --------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_GET
    do_HEAD = do_GET

    def _dispatch(self) -> None:
        cfg = self.server.config
        parts = urlsplit(self.path)
        path = parts.path or "/"
        query = parse_qs(parts.query)
        route = self._route_label(path)
        self.server.metrics.begin()
        try:
            try:
                body = self._read_body()
            except HTTPError:
                self.close_connection = True  # framing of the rest of the stream is unknown
                raise
            if path.startswith("/api/") and cfg.fail_ratio > 0 and random.random() < cfg.fail_ratio:
                raise HTTPError(500, "injected failure (APP_FAIL_RATIO)")
            if path == "/health":
                self._health()
            elif path == "/metrics":
                self._send(200, self.server.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")
            elif path in SSE_PATHS and self.command in ("GET", "POST"):
                self._sse(query)
            elif path == WS_PATH and self.command == "GET":
                self._websocket()
            elif path == "/api/version":
                self._json(200, {"version": cfg.version, "hostname": socket.gethostname()})
            elif path == "/api/echo":
                self._json(
                    200,
                    {
                        "method": self.command,
                        "path": path,
                        "query": parts.query,
                        "request_id": self.headers.get("X-Request-ID"),
                        "body_length": len(body),
                        "content_type": self.headers.get("Content-Type"),
                        "forwarded_for": self.headers.get("X-Forwarded-For"),
                        "version": cfg.version,
                        "hostname": socket.gethostname(),
                    },
                )
            elif path == "/api/slow":
                ms = self._number(query, "ms", 1000, 0, 600_000)
                time.sleep(ms / 1000.0)
                self._json(200, {"slept_ms": int(ms), "version": cfg.version})
            elif path == "/api/fail":
                code = int(self._number(query, "code", 500, 100, 599))
                if code < 200 or code in (204, 304):
                    raise HTTPError(400, "code must be 200..599 and carry a body (not 204/304)")
                self._json(code, {"status": code, "version": cfg.version})
            elif path == "/":
                self._json(
                    200,
                    {
                        "service": "demo-backend",
                        "version": cfg.version,
                        "endpoints": [
                            "/health",
                            "/metrics",
                            "/api/version",
                            "/api/echo",
                            "/api/slow?ms=N",
                            "/api/fail?code=N",
                            *SSE_PATHS,
                            WS_PATH,
                        ],
                    },
                )
            else:
                raise HTTPError(404, "not found")
        except HTTPError as err:
            if self._status:  # headers already sent (cannot happen for HTTPError today)
                self.close_connection = True
            else:
                self._json(err.status, {"error": err.message, "status": err.status, "version": cfg.version})
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            self._status = self._status or 499  # client went away
        finally:
            duration = time.monotonic() - self._t0
            self.server.metrics.observe(self.command, route, self._status or 500, duration)
            self.access_log(duration)

    @staticmethod
    def _route_label(path: str) -> str:
        if (
            path in ("/", "/health", "/metrics", "/api/version", "/api/echo", "/api/slow", "/api/fail", WS_PATH)
            or path in SSE_PATHS
        ):
            return path
        return "/api/other" if path.startswith("/api/") else "other"

    @staticmethod
    def _number(query: dict, name: str, default: float, lo: float, hi: float) -> float:
        raw = (query.get(name) or [None])[0]
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise HTTPError(400, f"{name} must be a number") from None
        if not lo <= value <= hi:
            raise HTTPError(400, f"{name} must be between {lo:g} and {hi:g}")
        return value

    def _health(self) -> None:
        cfg = self.server.config
        if cfg.broken and time.monotonic() - self.server.started > cfg.broken_after:
            self._json(503, {"status": "fail", "version": cfg.version, "reason": "broken build (APP_BROKEN=1)"})
        else:
            self._json(200, {"status": "ok", "version": cfg.version})

    def _sse(self, query: dict) -> None:
        cfg = self.server.config
        events = int(self._number(query, "events", 5, 0, 100_000))
        interval = self._number(query, "interval", 0.2, 0, 60)
        chunked = self.request_version == "HTTP/1.1"
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers["Connection"] = "close"
            self.close_connection = True
        self._start(200, headers)
        if self.command == "HEAD":
            return

        def emit(text: str) -> None:
            data = text.encode()
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                self.wfile.write(data)
            self.wfile.flush()
            self._sent += len(data)

        self.wfile.flush()
        end: dict = {"events": events, "version": cfg.version}
        for i in range(events):
            if self.server.cut.is_set():
                # The shutdown grace is over: a final event, then the clean end of the body (not a reset).
                end = {"events": i, "version": cfg.version, "cut": "shutdown"}
                break
            emit("data: " + json.dumps({"n": i, "version": cfg.version}, separators=(",", ":")) + "\n\n")
            if interval and i < events - 1:
                self.server.cut.wait(interval)
        emit("event: end\ndata: " + json.dumps(end, separators=(",", ":")) + "\n\n")
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    # --- WebSocket (RFC 6455): the handshake, then frames on the same connection ----------------------

    def _websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key") or ""
        upgrade = (self.headers.get("Upgrade") or "").lower()
        connection = (self.headers.get("Connection") or "").lower()
        if upgrade != "websocket" or "upgrade" not in connection or not key:
            raise HTTPError(400, "a WebSocket handshake needs Upgrade: websocket, Connection: upgrade and a key")
        if (self.headers.get("Sec-WebSocket-Version") or "") != "13":
            raise HTTPError(400, "Sec-WebSocket-Version must be 13")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self._status = 101
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        self.connection.settimeout(None)  # a session may stay quiet longer than the keep-alive timeout
        session = WebSocketSession(self)
        self.server.sessions_add(session)
        try:
            session.serve()
        finally:
            self.server.sessions_remove(session)


class WebSocketSession:
    """One accepted WebSocket: echoes messages; `close()` (from the shutdown) sends a close frame."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.write_lock = threading.Lock()
        self.closing = False

    def send(self, opcode: int, payload: bytes = b"") -> None:
        """One unmasked frame (a server never masks), FIN set."""
        n = len(payload)
        if n < 126:
            head = bytes([0x80 | opcode, n])
        elif n < 1 << 16:
            head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
        with self.write_lock:
            self.handler.wfile.write(head + payload)
            self.handler.wfile.flush()
            self.handler._sent += len(head) + n

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        try:
            self.send(0x8, code.to_bytes(2, "big") + reason.encode())
        except OSError:
            pass

    def _read_exactly(self, n: int) -> bytes:
        data = self.handler.rfile.read(n)
        if len(data) < n:
            raise ConnectionResetError("WebSocket closed in the middle of a frame")
        return data

    def _frame(self) -> tuple[bool, int, bytes]:
        first, second = self._read_exactly(2)
        fin, opcode, masked, n = bool(first & 0x80), first & 0x0F, bool(second & 0x80), second & 0x7F
        if n == 126:
            n = int.from_bytes(self._read_exactly(2), "big")
        elif n == 127:
            n = int.from_bytes(self._read_exactly(8), "big")
        if n > WS_MAX_MESSAGE or not masked:  # RFC 6455 5.1: a client masks every frame
            raise HTTPError(400, "WebSocket frame unmasked or larger than %d bytes" % WS_MAX_MESSAGE)
        mask = self._read_exactly(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self._read_exactly(n)))
        return fin, opcode, payload

    def serve(self) -> None:
        message, message_opcode = b"", 0
        while True:
            try:
                fin, opcode, payload = self._frame()
            except HTTPError:
                self.close(1002, "protocol error")
                return
            if opcode == 0x8:  # close: answer it (unless we began), then the connection ends
                if not self.closing:
                    self.close(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000, "")
                return
            if opcode == 0x9:
                self.send(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode in (0x1, 0x2):
                message, message_opcode = payload, opcode
            elif opcode == 0x0:
                message += payload
            if fin and message_opcode and not self.closing:
                self.send(message_opcode, message)
                message, message_opcode = b"", 0


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], config: Config) -> None:
        self.config = config
        self.metrics = Metrics(config.version)
        self.started = time.monotonic()
        self.draining = threading.Event()
        self.cut = threading.Event()  # the shutdown grace is over: end streams and sessions now
        self._sessions: set[WebSocketSession] = set()
        self._conns: dict[Handler, str] = {}
        self._conns_lock = threading.Lock()
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall start-up.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), port

    def track(self, handler: Handler, state: str) -> None:
        with self._conns_lock:
            self._conns[handler] = state

    def untrack(self, handler: Handler) -> None:
        with self._conns_lock:
            self._conns.pop(handler, None)

    def sessions_add(self, session: WebSocketSession) -> None:
        with self._conns_lock:
            self._sessions.add(session)
        if self.cut.is_set():
            session.close(1001, "server shutting down")

    def sessions_remove(self, session: WebSocketSession) -> None:
        with self._conns_lock:
            self._sessions.discard(session)

    def cut_streams(self) -> None:
        """The grace is over: SSE streams send their final event, WebSocket sessions get a close frame 1001."""
        self.cut.set()
        with self._conns_lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.close(1001, "server shutting down")

    def busy(self) -> int:
        with self._conns_lock:
            return sum(1 for state in self._conns.values() if state == "busy")

    def begin_drain(self) -> None:
        """Stop accepting and close idle keep-alive connections; in-flight requests go on."""
        self.draining.set()
        self.shutdown()  # returns once serve_forever() has left its loop
        self.server_close()  # the listening socket: new connections are refused from here on
        with self._conns_lock:
            idle = [h for h, state in self._conns.items() if state == "idle"]
        for handler in idle:
            try:
                # SHUT_RD wakes a reader blocked on the next request line; a response being written is unaffected.
                handler.connection.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def wait_drained(self, grace: float) -> bool:
        deadline = time.monotonic() + grace
        while self.busy():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


def main() -> int:
    config = Config.from_env()
    host = os.environ.get("HOST", "0.0.0.0")
    try:
        port = int(os.environ.get("PORT", "8000"))
    except ValueError:
        sys.stderr.write(f"demo-backend: PORT={os.environ.get('PORT')!r} is not a port number\n")
        return 2
    server = DemoServer((host, port), config)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    print(
        f"demo-backend {config.version} listening on {host}:{server.server_port} "
        f"(broken={int(config.broken)} fail_ratio={config.fail_ratio} grace={config.shutdown_grace}s)",
        flush=True,
    )
    while not stop.wait(1.0):
        pass
    name = signal.Signals(received[0]).name if received else "signal"
    print(
        f"demo-backend: {name} received, draining {server.busy()} in-flight request(s) "
        f"for up to {config.shutdown_grace:g}s",
        flush=True,
    )
    server.begin_drain()
    if server.wait_drained(config.shutdown_grace):
        print("demo-backend: drained, exiting", flush=True)
        return 0
    print(
        f"demo-backend: grace period over with {server.busy()} request(s) in flight: ending streams "
        "(final event) and WebSocket sessions (close 1001)",
        flush=True,
    )
    server.cut_streams()
    if server.wait_drained(CUT_WAIT_S):
        print("demo-backend: streams ended, exiting", flush=True)
    else:
        print(f"demo-backend: exiting with {server.busy()} request(s) still in flight", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
