"""Unit tests of the demo backend: run with `python3 -m pytest sandbox/images/demo-backend`."""

from __future__ import annotations

import http.client
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
    assert slow["0.025"] == "0" and slow["0.05"] == "1"


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
    "method,path", [("POST", "/workflow/v1/chat/completions"), ("GET", "/console-api/chat-message/")]
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
