"""Unit tests of the demo backend: run with `python3 -m pytest sandbox/images/demo-backend`."""

from __future__ import annotations

import base64
import hashlib
import http.client
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import app


class Running:
    def __init__(self, **config) -> None:
        self.server = app.DemoServer(("127.0.0.1", 0), app.Config(**config))
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def conn(self, timeout: float = 5) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = self.conn()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        if not self.server.draining.is_set():
            self.server.begin_drain()


@pytest.fixture
def running():
    started: list[Running] = []

    def start(**config) -> Running:
        r = Running(**config)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def test_health_ok(running):
    r = running(version="7.1")
    status, headers, body = r.request("GET", "/health")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    assert json.loads(body) == {"status": "ok", "version": "7.1"}


def test_keepalive_reuses_connection(running):
    r = running()
    conn = r.conn()
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        resp.read()
        sock = conn.sock
        assert sock is not None and resp.version == 11 and not resp.will_close
        for path in ("/api/version", "/metrics", "/api/echo"):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
        assert conn.sock is sock, "the connection was not kept alive"
    finally:
        conn.close()


def test_broken_health_turns_503(running):
    r = running(version="3.0", broken=True, broken_after=0.4)
    status, _, body = r.request("GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    time.sleep(0.6)
    for _ in range(3):
        status, _, body = r.request("GET", "/health")
        assert status == 503
        assert json.loads(body)["status"] == "fail"


def test_api_endpoints(running):
    r = running(version="2.0")
    status, _, body = r.request("GET", "/api/version")
    assert status == 200
    assert json.loads(body) == {"version": "2.0", "hostname": socket.gethostname()}

    status, headers, body = r.request(
        "POST", "/api/echo?x=1", body=b"0123456789", headers={"X-Request-ID": "req-42", "Content-Type": "text/plain"}
    )
    echo = json.loads(body)
    assert status == 200 and headers["X-Request-ID"] == "req-42"
    assert echo["request_id"] == "req-42" and echo["body_length"] == 10 and echo["method"] == "POST"
    assert echo["query"] == "x=1"

    started = time.monotonic()
    status, _, _ = r.request("GET", "/api/slow?ms=300")
    assert status == 200 and time.monotonic() - started >= 0.3

    assert r.request("GET", "/api/fail?code=503")[0] == 503
    assert r.request("GET", "/api/fail")[0] == 500
    assert r.request("GET", "/api/fail?code=abc")[0] == 400
    assert r.request("GET", "/nope")[0] == 404


def test_fail_ratio_fails_api_but_not_health(running):
    r = running(fail_ratio=1.0)
    assert r.request("GET", "/api/version")[0] == 500
    assert r.request("GET", "/health")[0] == 200


METRIC_LINE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? '
    r'[-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|\+Inf|-Inf|NaN)$'
)


def test_metrics_format(running):
    r = running(version="1.0")
    for path in ("/health", "/health", "/api/fail?code=502", "/api/slow?ms=30"):
        r.request("GET", path)
    status, headers, body = r.request("GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line), line
        else:
            assert METRIC_LINE.match(line), f"not a valid sample line: {line!r}"
    assert "# TYPE http_requests_total counter" in text
    assert "# TYPE http_request_duration_seconds histogram" in text
    assert 'app_info{version="1.0"} 1' in text
    assert 'http_requests_total{method="GET",path="/health",status="200"} 2' in text
    assert 'http_requests_total{method="GET",path="/api/fail",status="502"} 1' in text

    buckets = re.findall(
        r'^http_request_duration_seconds_bucket\{method="GET",path="/health",le="([^"]+)"\} (\d+)$', text, re.M
    )
    assert [le for le, _ in buckets] == [
        "0.005",
        "0.01",
        "0.025",
        "0.05",
        "0.1",
        "0.25",
        "0.5",
        "1.0",
        "2.5",
        "5.0",
        "10.0",
        "+Inf",
    ]
    counts = [int(c) for _, c in buckets]
    assert counts == sorted(counts) and counts[-1] == 2
    assert re.search(r'^http_request_duration_seconds_count\{method="GET",path="/health"\} 2$', text, re.M)
    assert re.search(r'^http_request_duration_seconds_sum\{method="GET",path="/health"\} [0-9.e-]+$', text, re.M)
    slow = dict(
        re.findall(
            r'^http_request_duration_seconds_bucket\{method="GET",path="/api/slow",le="([^"]+)"\} '
            r'(\d+)$',
            text,
            re.M,
        )
    )
    # The 30 ms request lands in the first bucket at or above its own duration (the _sum; on a loaded machine it
    # may be well above 30 ms), in none below it, and never below 0.025.
    summed = re.search(r'^http_request_duration_seconds_sum\{method="GET",path="/api/slow"\} ([0-9.e-]+)$', text, re.M)
    assert summed, text
    took = float(summed.group(1))
    assert took >= 0.03
    assert slow["0.025"] == "0" and slow["+Inf"] == "1"
    for le, count in slow.items():
        if le != "+Inf":
            assert count == ("1" if float(le) >= took else "0"), (le, count, took)


def _read_headers(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        assert chunk, "connection closed before the headers"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    out, done = b"", False
    while data:
        line, sep, data = data.partition(b"\r\n")
        if not sep:
            break
        size = int(line, 16)
        if size == 0:
            done = True
            break
        out += data[:size]
        data = data[size + 2 :]
    return out, done


def test_sse_streams_before_the_end(running):
    r = running(version="2.0")
    events, interval = 5, 0.3
    sock = socket.create_connection(("127.0.0.1", r.port), timeout=5)
    try:
        started = time.monotonic()
        sock.sendall(f"GET /sse?events={events}&interval={interval} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        head, rest = _read_headers(sock)
        headers = head.decode().lower()
        assert headers.startswith("http/1.1 200")
        assert "content-type: text/event-stream" in headers
        assert "cache-control: no-cache" in headers
        assert "transfer-encoding: chunked" in headers
        raw = rest
        while b"data: " not in _dechunk(raw)[0]:
            chunk = sock.recv(4096)
            assert chunk
            raw += chunk
        first_at = time.monotonic() - started
        assert first_at < interval * (events - 1) / 2, f"first event after {first_at:.2f}s: stream is buffered"
        while not _dechunk(raw)[1]:
            chunk = sock.recv(4096)
            assert chunk
            raw += chunk
        total = time.monotonic() - started
        assert total >= interval * (events - 1) * 0.9
        body = _dechunk(raw)[0].decode()
    finally:
        sock.close()
    blocks = [b for b in body.split("\n\n") if b]
    data = [json.loads(b[len("data: ") :]) for b in blocks if b.startswith("data: ")]
    assert data == [{"n": i, "version": "2.0"} for i in range(events)]
    assert blocks[-1].startswith("event: end\n")


@pytest.mark.parametrize(
    "method,path",
    [("POST", "/workflow/v1/chat/completions"), ("GET", "/console-api/chat-message/"), ("POST", "/api/chat/stream")],
)
def test_sse_alias_paths(running, method, path):
    r = running()
    status, headers, body = r.request(method, f"{path}?events=2&interval=0", body=b"{}" if method == "POST" else None)
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    assert body.decode().count("data: {\"n\"") == 2 and "event: end" in body.decode()


def test_graceful_shutdown_drains_in_flight(running):
    r = running()
    idle = r.conn()
    idle.request("GET", "/health")
    idle.getresponse().read()  # an idle keep-alive connection, to be closed by the drain

    result: dict = {}

    def slow() -> None:
        result["response"] = r.request("GET", "/api/slow?ms=800")

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.2)
    assert r.server.busy() == 1
    began = time.monotonic()
    r.server.begin_drain()
    assert time.monotonic() - began < 0.5, "begin_drain must not wait for in-flight requests"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", r.port), timeout=1).close()
    assert idle.sock.recv(1) == b"", "idle keep-alive connection was not closed"
    idle.close()
    assert r.server.wait_drained(5)
    t.join(5)
    status, _headers, body = result["response"]
    assert status == 200 and json.loads(body)["slept_ms"] == 800


def test_sigterm_process_exits_zero_after_in_flight(tmp_path):
    env = dict(os.environ, PORT="0", HOST="127.0.0.1", APP_VERSION="9.9", APP_SHUTDOWN_GRACE="5")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "app.py")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", line).group(1))
        result: dict = {}

        def slow() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/slow?ms=700")
            resp = conn.getresponse()
            result["status"] = resp.status
            result["body"] = resp.read()

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        t.join(5)
        assert result["status"] == 200
        log = proc.stdout.read()
        assert "SIGTERM received" in log and "drained" in log
        assert re.search(r'"GET /api/slow\?ms=700 HTTP/1.1" 200 \d+ ', log), log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- WebSocket echo and the shutdown of streams ----------------------------------------------------------


def ws_connect(port: int, path: str = "/ws/echo", timeout: float = 5) -> tuple[socket.socket, bytes]:
    """A minimal RFC 6455 client: the handshake; returns the socket and any bytes read past the headers."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head, rest = _read_headers(sock)
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 101 Switching Protocols", lines[0]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    expected = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
    assert headers["sec-websocket-accept"] == expected.decode()
    assert headers["upgrade"].lower() == "websocket"
    return sock, rest


def ws_send(sock: socket.socket, opcode: int, payload: bytes) -> None:
    mask = os.urandom(4)
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    sock.sendall(bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


class FrameReader:
    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.sock, self.buf = sock, buffered

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed in the middle of a frame"
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self) -> tuple[int, bytes]:
        first, second = self._take(2)
        assert not second & 0x80, "a server must not mask its frames"
        n = second & 0x7F
        if n == 126:
            n = int.from_bytes(self._take(2), "big")
        elif n == 127:
            n = int.from_bytes(self._take(8), "big")
        return first & 0x0F, self._take(n)


def test_websocket_echo_ping_and_close(running):
    r = running()
    sock, rest = ws_connect(r.port)
    reader = FrameReader(sock, rest)
    try:
        for text in ("hello", "é" * 100, "x" * 60000):
            ws_send(sock, 0x1, text.encode())
            assert reader.frame() == (0x1, text.encode())
        ws_send(sock, 0x9, b"are you there")
        assert reader.frame() == (0xA, b"are you there")
        ws_send(sock, 0x8, (1000).to_bytes(2, "big"))
        opcode, payload = reader.frame()
        assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1000
        assert sock.recv(1) == b"", "the server must close the connection after the close handshake"
    finally:
        sock.close()


def test_websocket_handshake_without_upgrade_is_refused(running):
    r = running()
    assert r.request("GET", "/ws/echo")[0] == 400


def test_websocket_survives_the_drain_and_is_closed_1001_when_the_grace_is_over(running):
    r = running()
    sock, rest = ws_connect(r.port)
    reader = FrameReader(sock, rest)
    try:
        r.server.begin_drain()
        ws_send(sock, 0x1, b"still here")  # the drain does not end an open session
        assert reader.frame() == (0x1, b"still here")
        r.server.cut_streams()
        opcode, payload = reader.frame()
        assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1001
        ws_send(sock, 0x8, (1001).to_bytes(2, "big"))
        assert sock.recv(1) == b""
        assert r.server.wait_drained(3)
    finally:
        sock.close()


def read_sse(sock: socket.socket, rest: bytes) -> tuple[list[dict], dict | None, bool]:
    """(data events, the final `event: end` data or None, whether the chunked body ended cleanly)."""
    raw = rest
    while True:
        body, done = _dechunk(raw)
        if done:
            break
        chunk = sock.recv(4096)
        if not chunk:
            break
        raw += chunk
    blocks = [b for b in body.decode().split("\n\n") if b]
    data = [json.loads(b[len("data: ") :]) for b in blocks if b.startswith("data: ")]
    end = next((json.loads(b.split("data: ", 1)[1]) for b in blocks if b.startswith("event: end\n")), None)
    return data, end, done


def start_app(grace: float) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PORT="0", HOST="127.0.0.1", APP_VERSION="9.9", APP_SHUTDOWN_GRACE=str(grace))
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "app.py")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    line = proc.stdout.readline()
    return proc, int(re.search(r"listening on 127\.0\.0\.1:(\d+)", line).group(1))


def open_sse(port: int, events: int, interval: float) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET /sse?events={events}&interval={interval} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    head, rest = _read_headers(sock)
    assert head.startswith(b"HTTP/1.1 200")
    return sock, rest


def test_sigterm_lets_a_stream_shorter_than_the_grace_finish_every_event():
    proc, port = start_app(grace=5)
    try:
        sock, rest = open_sse(port, events=10, interval=0.15)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        data, end, clean = read_sse(sock, rest)
        sock.close()
        assert data == [{"n": i, "version": "9.9"} for i in range(10)]
        assert end == {"events": 10, "version": "9.9"} and clean
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_ends_a_longer_stream_with_a_final_event_and_a_websocket_with_close_1001():
    proc, port = start_app(grace=1)
    try:
        sock, rest = open_sse(port, events=1000, interval=0.1)
        ws, ws_rest = ws_connect(port)
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        data, end, clean = read_sse(sock, rest)
        took = time.monotonic() - sent
        sock.close()
        assert 0.8 <= took < 4.0, took
        assert end is not None and end["cut"] == "shutdown", "no final event: the client cannot tell a cut"
        assert clean, "the chunked body must end with its last chunk, not a reset"
        assert [d["n"] for d in data] == list(range(len(data))) and end["events"] == len(data)
        opcode, payload = FrameReader(ws, ws_rest).frame()
        assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1001
        ws_send(ws, 0x8, (1001).to_bytes(2, "big"))
        ws.close()
        assert proc.wait(timeout=10) == 0
        assert "ending streams" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- metric dialects and the fault knobs (docs/platform-metrics.md) ---------------------------------------

# promtool from PATH or the sandbox's Prometheus image: the one helper of tests/unit (its conftest marks the test
# `docker` when promtool is not on PATH). Loaded by path, since this directory runs without the collection layout.
_PROM_TOOLS_SPEC = importlib.util.spec_from_file_location(
    "demo_backend_prom_tools", HERE.parents[2] / "tests" / "unit" / "prom_tools.py"
)
_prom_tools = importlib.util.module_from_spec(_PROM_TOOLS_SPEC)
_PROM_TOOLS_SPEC.loader.exec_module(_prom_tools)
promtool = _prom_tools.promtool

AGENTCHAT_GOLDEN = """\
# HELP app_info Build information of the demo backend.
# TYPE app_info gauge
app_info{version="1.0\\"x"} 1
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1700000000.250
# HELP http_requests_in_flight Requests currently being served.
# TYPE http_requests_in_flight gauge
http_requests_in_flight 1
# HELP http_requests_total Total HTTP requests by method, path and status.
# TYPE http_requests_total counter
http_requests_total{method="GET",path="/health",status="200"} 2
http_requests_total{method="POST",path="/api/echo",status="500"} 1
# HELP http_request_duration_seconds HTTP request duration in seconds by method and path.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{method="GET",path="/health",le="0.005"} 1
http_request_duration_seconds_bucket{method="GET",path="/health",le="0.01"} 1
http_request_duration_seconds_bucket{method="GET",path="/health",le="0.025"} 1
http_request_duration_seconds_bucket{method="GET",path="/health",le="0.05"} 1
http_request_duration_seconds_bucket{method="GET",path="/health",le="0.1"} 1
http_request_duration_seconds_bucket{method="GET",path="/health",le="0.25"} 1
http_request_duration_seconds_bucket{method="GET",path="/health",le="0.5"} 1
http_request_duration_seconds_bucket{method="GET",path="/health",le="1.0"} 1
http_request_duration_seconds_bucket{method="GET",path="/health",le="2.5"} 1
http_request_duration_seconds_bucket{method="GET",path="/health",le="5.0"} 1
http_request_duration_seconds_bucket{method="GET",path="/health",le="10.0"} 1
http_request_duration_seconds_bucket{method="GET",path="/health",le="+Inf"} 2
http_request_duration_seconds_sum{method="GET",path="/health"} 12.503
http_request_duration_seconds_count{method="GET",path="/health"} 2
http_request_duration_seconds_bucket{method="POST",path="/api/echo",le="0.005"} 0
http_request_duration_seconds_bucket{method="POST",path="/api/echo",le="0.01"} 0
http_request_duration_seconds_bucket{method="POST",path="/api/echo",le="0.025"} 0
http_request_duration_seconds_bucket{method="POST",path="/api/echo",le="0.05"} 0
http_request_duration_seconds_bucket{method="POST",path="/api/echo",le="0.1"} 0
http_request_duration_seconds_bucket{method="POST",path="/api/echo",le="0.25"} 1
http_request_duration_seconds_bucket{method="POST",path="/api/echo",le="0.5"} 1
http_request_duration_seconds_bucket{method="POST",path="/api/echo",le="1.0"} 1
http_request_duration_seconds_bucket{method="POST",path="/api/echo",le="2.5"} 1
http_request_duration_seconds_bucket{method="POST",path="/api/echo",le="5.0"} 1
http_request_duration_seconds_bucket{method="POST",path="/api/echo",le="10.0"} 1
http_request_duration_seconds_bucket{method="POST",path="/api/echo",le="+Inf"} 1
http_request_duration_seconds_sum{method="POST",path="/api/echo"} 0.2
http_request_duration_seconds_count{method="POST",path="/api/echo"} 1
"""


def test_agentchat_exposition_is_byte_for_byte_the_one_before_the_dialects():
    # The text the app rendered before the dialects existed, for the same observations.
    metrics = app.Metrics(app.Config(version='1.0"x'))
    metrics.started = 1700000000.25
    metrics.begin()  # the scrape itself, still in flight
    for method, path, status, seconds in [
        ("GET", "/health", 200, 0.003),
        ("POST", "/api/echo", 500, 0.2),
        ("GET", "/health", 200, 12.5),
    ]:
        metrics.begin()
        metrics.observe(method, path, status, seconds)
    assert metrics.render() == AGENTCHAT_GOLDEN


def test_the_default_dialect_is_agentchat(monkeypatch):
    monkeypatch.delenv("APP_METRICS_DIALECT", raising=False)
    assert app.Config.from_env().dialect == "agentchat"
    assert app.Config().dialect == "agentchat"
    assert tuple(app.METRICS_BY_DIALECT) == app.DIALECTS


def sample(text: str, series: str) -> float:
    """The value of one sample line, `name{labels}` exactly as rendered (or the bare name)."""
    found = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.rsplit(" ", 1)[0] == series]
    assert len(found) == 1, f"{series} not exactly once in:\n{text}"
    return float(found[0])


def scrape(r: Running) -> str:
    status, _, body = r.request("GET", "/metrics")
    assert status == 200
    return body.decode()


def set_faults(r: Running, **knobs) -> dict:
    query = "&".join(f"{name}={value}" for name, value in knobs.items())
    status, _, body = r.request("POST", f"/faults?{query}")
    assert status == 200, body
    return json.loads(body)


# promtool's lint wants base units; the Astron Agent contract names its times in microseconds on purpose.
ACCEPTED_LINT = {
    "astron-agent": {
        'server_request_time_microseconds use base unit "seconds" instead of "microseconds"',
        'rely_server_request_time_microseconds use base unit "seconds" instead of "microseconds"',
    }
}


@pytest.mark.parametrize("dialect", app.DIALECTS)
def test_each_dialect_passes_promtool_check_metrics(running, promtool, tmp_path, dialect):
    r = running(dialect=dialect, version="5.0")
    for method, path in [
        ("GET", "/health"),
        ("POST", "/api/echo"),
        ("GET", "/api/version"),
        ("GET", "/api/fail?code=503"),
        ("GET", "/nope"),
        ("POST", "/api/sandbox/run"),
        ("POST", "/api/llm"),
        ("POST", "/api/rely?server=mysql"),
        ("GET", "/sse?events=1&interval=0"),
        ("GET", "/faults"),
    ]:
        r.request(method, path, body=b"{}" if method == "POST" else None)
    text = scrape(r)
    result = promtool.run(["check", "metrics"], tmp_path, stdin=text)
    problems = {line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()}
    assert problems <= ACCEPTED_LINT.get(dialect, set()), (result.returncode, problems, text)
    assert result.returncode == (3 if problems else 0), (result.returncode, result.stdout, result.stderr)
    assert 'app_info{version="5.0"} 1' in text


def test_helloagents_series_move_with_requests_and_faults(running):
    r = running(dialect="helloagents")
    text = scrape(r)
    assert sample(text, 'sandbox_executions_total{status="success"}') == 0
    assert sample(text, 'sandbox_executions_total{status="failure"}') == 0
    assert sample(text, "sandbox_pool_available") == 5
    for _ in range(3):
        assert r.request("POST", "/api/echo", body=b"x")[0] == 200  # one execution each, answer unchanged
    status, _, body = r.request("POST", "/api/sandbox/run")
    assert status == 200 and json.loads(body)["status"] == "success"
    text = scrape(r)
    assert sample(text, 'sandbox_executions_total{status="success"}') == 4
    assert sample(text, "sandbox_execution_duration_seconds_count") == 4
    assert sample(text, 'http_requests_total{method="POST",endpoint="/api/echo",status_code="200"}') == 3
    assert sample(text, 'http_request_duration_seconds_count{method="POST",endpoint="/api/sandbox/run"}') == 1
    assert 'le="1"' in text and 'le="60"' in text

    set_faults(r, APP_SANDBOX_FAIL_RATIO=1, APP_SANDBOX_DURATION_S=0.3)
    started = time.monotonic()
    status, _, body = r.request("POST", "/api/sandbox/run")
    assert status == 500 and json.loads(body)["status"] == "failure"
    assert time.monotonic() - started >= 0.3
    assert r.request("GET", "/api/version")[0] == 200  # the API answers; the execution behind it failed
    text = scrape(r)
    assert sample(text, 'sandbox_executions_total{status="failure"}') == 2
    assert sample(text, 'sandbox_execution_duration_seconds_bucket{le="0.25"}') == 4
    assert sample(text, 'sandbox_execution_duration_seconds_bucket{le="0.5"}') == 6

    set_faults(r, reset=1, APP_SANDBOX_POOL_SIZE=0)
    assert sample(scrape(r), "sandbox_pool_available") == 0
    assert r.request("POST", "/api/sandbox/run")[0] == 500  # no free sandbox: the execution fails at once
    assert sample(scrape(r), 'sandbox_executions_total{status="failure"}') == 3


def test_helloagents_pool_empties_under_concurrent_executions(running):
    r = running(dialect="helloagents", sandbox_pool_size=2, sandbox_duration=0.6)
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(r.request("POST", "/api/sandbox/run")[0])) for _ in range(2)
    ]
    for t in threads:
        t.start()
    time.sleep(0.25)
    assert sample(scrape(r), "sandbox_pool_available") == 0
    assert r.request("POST", "/api/sandbox/run")[0] == 500  # the third finds the pool empty
    for t in threads:
        t.join(5)
    assert sorted(results) == [200, 200]
    text = scrape(r)
    assert sample(text, "sandbox_pool_available") == 2
    assert sample(text, 'sandbox_executions_total{status="failure"}') == 1


def test_heartrule_series_move_with_requests_and_faults(running):
    r = running(dialect="heartrule", cache_hit_ratio=1.0)
    text = scrape(r)
    assert sample(text, "db_pool_max_connections") == 10
    assert sample(text, 'db_pool_connections{state="idle"}') == 10
    assert sample(text, "cache_hits_total") == 0 and sample(text, "cache_misses_total") == 0
    for _ in range(2):
        assert r.request("GET", "/api/version")[0] == 200
    status, _, body = r.request("POST", "/api/llm?provider=deepseek")
    assert status == 200 and json.loads(body) == {"provider": "deepseek", "outcome": "success"}
    text = scrape(r)
    assert sample(text, 'llm_requests_total{provider="openai",outcome="success"}') == 2
    assert sample(text, 'llm_requests_total{provider="deepseek",outcome="success"}') == 1
    assert sample(text, 'llm_request_duration_seconds_count{provider="openai"}') == 2
    assert sample(text, "cache_hits_total") == 2 and sample(text, "cache_misses_total") == 0
    assert sample(text, 'http_requests_total{method="GET",route="/api/version",status_code="200"}') == 2
    assert sample(text, 'http_request_duration_seconds_count{method="POST",route="/api/llm",status_code="200"}') == 1
    assert r.request("POST", "/api/llm?provider=nobody")[0] == 400

    set_faults(r, APP_LLM_ERROR_RATIO=1, APP_CACHE_HIT_RATIO=0)
    assert r.request("POST", "/api/llm")[0] == 502
    assert r.request("POST", "/api/echo")[0] == 200
    set_faults(r, APP_LLM_ERROR_RATIO=0, APP_LLM_TIMEOUT_RATIO=1, APP_LLM_LATENCY_S=0.3)
    started = time.monotonic()
    assert r.request("POST", "/api/llm")[0] == 504
    assert time.monotonic() - started >= 0.3
    text = scrape(r)
    assert sample(text, 'llm_requests_total{provider="openai",outcome="error"}') == 2
    assert sample(text, 'llm_requests_total{provider="openai",outcome="timeout"}') == 1
    assert sample(text, 'llm_request_duration_seconds_bucket{provider="openai",le="0.25"}') == 4
    assert sample(text, 'llm_request_duration_seconds_bucket{provider="openai",le="0.5"}') == 5
    assert sample(text, "cache_misses_total") == 1

    set_faults(r, APP_DB_POOL_MAX=4, APP_DB_POOL_ACTIVE=6, APP_DB_POOL_WAITING=3)
    text = scrape(r)
    assert sample(text, "db_pool_max_connections") == 4
    assert sample(text, 'db_pool_connections{state="active"}') == 4
    assert sample(text, 'db_pool_connections{state="idle"}') == 0
    assert sample(text, 'db_pool_connections{state="waiting"}') == 5  # 3 injected, 2 over the pool's size


def test_heartrule_requests_hold_a_db_connection_while_they_work(running):
    r = running(dialect="heartrule", llm_latency=0.6)
    t = threading.Thread(target=r.request, args=("POST", "/api/echo"))
    t.start()
    time.sleep(0.25)
    text = scrape(r)
    assert sample(text, 'db_pool_connections{state="active"}') == 1
    assert sample(text, 'db_pool_connections{state="idle"}') == 9
    t.join(5)
    assert sample(scrape(r), 'db_pool_connections{state="active"}') == 0


def test_astron_agent_series_move_with_requests_and_faults(running):
    r = running(dialect="astron-agent")
    assert sample(scrape(r), 'rely_server_request_total{server="llm",code="0"}') == 0
    assert r.request("POST", "/api/echo")[0] == 200  # one call to llm and one to mysql
    assert r.request("GET", "/api/fail?code=500")[0] == 500
    status, _, body = r.request("POST", "/api/rely?server=redis")
    assert status == 200 and json.loads(body) == {"server": "redis", "code": "0"}
    text = scrape(r)
    assert sample(text, 'server_request_total{path="/api/echo",code="0"}') == 1
    assert sample(text, 'server_request_total{path="/api/fail",code="10500"}') == 1
    assert sample(text, 'server_request_time_microseconds_count{path="/api/echo"}') == 1
    assert sample(text, 'rely_server_request_total{server="llm",code="0"}') == 2
    assert sample(text, 'rely_server_request_total{server="mysql",code="0"}') == 2
    assert sample(text, 'rely_server_request_total{server="redis",code="0"}') == 1
    assert sample(text, "server_conc") == 1  # the scrape itself
    assert r.request("POST", "/api/rely?server=nobody")[0] == 400

    set_faults(r, APP_RELY_ERROR_RATIO=1, APP_RELY_LATENCY_S=0.3)
    started = time.monotonic()
    status, _, body = r.request("POST", "/api/rely?server=llm")
    assert status == 502 and json.loads(body)["code"] == "10500"
    assert time.monotonic() - started >= 0.3
    text = scrape(r)
    assert sample(text, 'rely_server_request_total{server="llm",code="10500"}') == 1
    assert sample(text, 'rely_server_request_time_microseconds_bucket{server="llm",le="250000"}') == 2
    assert sample(text, 'rely_server_request_time_microseconds_bucket{server="llm",le="500000"}') == 3
    assert sample(text, 'server_request_total{path="/api/rely",code="10502"}') == 1
    assert sample(text, 'server_request_time_microseconds_count{path="/api/rely"}') == 3
    assert sample(text, 'server_request_time_microseconds_bucket{path="/api/rely",le="250000"}') == 2  # not the 0.3 s

    t = threading.Thread(target=r.request, args=("GET", "/api/version"))  # two calls of 0.3 s
    t.start()
    time.sleep(0.2)
    assert sample(scrape(r), "server_conc") == 2
    t.join(5)


def test_faults_endpoint_lists_checks_and_resets_the_knobs(running, capsys):
    r = running(dialect="heartrule")
    status, _, body = r.request("GET", "/faults")
    faults = json.loads(body)
    assert status == 200 and faults["dialect"] == "heartrule" and faults["max_delay_s"] == 60
    assert set(faults["faults"]) == {
        "APP_FAIL_RATIO",
        "APP_LLM_LATENCY_S",
        "APP_LLM_ERROR_RATIO",
        "APP_LLM_TIMEOUT_RATIO",
        "APP_DB_POOL_MAX",
        "APP_DB_POOL_ACTIVE",
        "APP_DB_POOL_WAITING",
        "APP_CACHE_HIT_RATIO",
    }
    assert faults["faults"]["APP_CACHE_HIT_RATIO"] == 0.9 and faults["faults"]["APP_DB_POOL_MAX"] == 10

    for query, said in [
        ("APP_LLM_LATENCY_S=61", "APP_LLM_LATENCY_S must be a number from 0 to 60"),  # every delay is bounded
        ("APP_LLM_ERROR_RATIO=1.5", "APP_LLM_ERROR_RATIO must be a number from 0 to 1"),
        ("APP_DB_POOL_WAITING=2.5", "APP_DB_POOL_WAITING must be an integer"),
        ("APP_DB_POOL_MAX=0", "APP_DB_POOL_MAX must be an integer from 1 to 1000"),
        ("APP_CACHE_HIT_RATIO=lots", "APP_CACHE_HIT_RATIO must be a number"),
        ("APP_SANDBOX_FAIL_RATIO=1", "APP_SANDBOX_FAIL_RATIO is a helloagents knob; this app speaks heartrule"),
        ("APP_NOPE=1", "APP_NOPE is not a fault knob"),
        ("APP_LLM_ERROR_RATIO=1&APP_LLM_LATENCY_S=-1", "APP_LLM_LATENCY_S"),  # all or nothing
    ]:
        status, _, body = r.request("POST", f"/faults?{query}")
        assert status == 400 and said in json.loads(body)["error"], (query, body)
    assert json.loads(r.request("GET", "/faults")[2])["faults"] == faults["faults"], "a refused change applied"

    changed = set_faults(r, APP_LLM_LATENCY_S=0.5, APP_DB_POOL_WAITING=7)
    assert changed["faults"]["APP_LLM_LATENCY_S"] == 0.5 and changed["faults"]["APP_DB_POOL_WAITING"] == 7
    assert "faults set: APP_LLM_LATENCY_S=0.5 APP_DB_POOL_WAITING=7" in capsys.readouterr().out
    assert set_faults(r, reset=1)["faults"] == faults["faults"]


def test_fault_knobs_start_from_the_environment(monkeypatch):
    monkeypatch.setenv("APP_METRICS_DIALECT", " HelloAgents ")
    monkeypatch.setenv("APP_SANDBOX_FAIL_RATIO", "0.25")
    monkeypatch.setenv("APP_SANDBOX_POOL_SIZE", "3")
    monkeypatch.setenv("APP_SANDBOX_DURATION_S", "600")  # clamped like every variable: delays stay bounded
    config = app.Config.from_env()
    assert config.dialect == "helloagents" and config.sandbox_fail_ratio == 0.25
    assert config.sandbox_pool_size == 3 and isinstance(config.sandbox_pool_size, int)
    assert config.sandbox_duration == app.MAX_INJECTED_DELAY_S


def test_fail_ratio_can_be_changed_without_a_restart(running):
    r = running()
    assert r.request("GET", "/api/version")[0] == 200
    assert set_faults(r, APP_FAIL_RATIO=1)["faults"] == {"APP_FAIL_RATIO": 1.0}
    assert r.request("GET", "/api/version")[0] == 500
    assert r.request("GET", "/health")[0] == 200
    set_faults(r, reset=1)
    assert r.request("GET", "/api/version")[0] == 200
    text = scrape(r)
    assert 'http_requests_total{method="POST",path="/faults",status="200"} 2' in text
    assert "sandbox_" not in text and "llm_" not in text  # agentchat speaks its own series only


def test_the_shutdown_cut_ends_an_injected_delay(running):
    r = running(dialect="helloagents", sandbox_duration=30)
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(response=r.request("POST", "/api/sandbox/run")))
    t.start()
    time.sleep(0.2)
    began = time.monotonic()
    r.server.cut_streams()
    t.join(5)
    assert time.monotonic() - began < 2 and result["response"][0] in (200, 500)


def test_an_unknown_dialect_refuses_to_start():
    with pytest.raises(app.ConfigError, match="APP_METRICS_DIALECT='grafana' is not a metrics dialect"):
        app.DemoServer(("127.0.0.1", 0), app.Config(dialect="grafana"))
    env = dict(os.environ, PORT="0", HOST="127.0.0.1", APP_METRICS_DIALECT="helloagent")
    proc = subprocess.run(
        [sys.executable, str(HERE / "app.py")], env=env, capture_output=True, text=True, timeout=10, check=False
    )
    assert proc.returncode == 2 and "listening" not in proc.stdout
    assert "APP_METRICS_DIALECT='helloagent'" in proc.stderr
    assert "allowed: agentchat, helloagents, astron-agent, heartrule" in proc.stderr


def test_every_answer_names_the_service_it_plays(running):
    r = running(service="console-hub")
    for path in ("/health", "/console-api/x", "/api/version"):
        status, headers, _body = r.request("GET", path)
        assert headers.get("X-Service") == "console-hub", (path, status, headers)
    status, headers, _body = running().request("GET", "/health")
    assert "X-Service" not in headers
