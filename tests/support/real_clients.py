"""Clients that judge an upgrade as real users see it, shared by bench/upgrade_bench.py and the molecule upgrade
verifier (molecule/upgrade/tests/test_real_clients.py); docs/drain.md explains what each one catches.

- ``Wrk`` and ``Hey``: clients nobody here wrote (Debian's wrk and hey), keep-alive, and hey with
  ``-disable-keepalive``; 3 GET /api/version : 1 POST /api/echo, each at a bounded rate;
- ``KeepAliveLoad``: one persistent connection per thread, counting the failures on a reused connection (the
  race of a reload closing an idle keep-alive connection as the client sends on it);
- ``SseStream`` and ``WebSocketSession``: a stream or a session held open across the change, checked for
  completeness (every event or echo, in order, the final event or the close handshake present).

Standard library only, plus the wrk and hey binaries on PATH (``apt-get install wrk hey``).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

GET_PATH = "/api/version"
POST_PATH = "/api/echo"
POST_BODY = b'{"client": "real"}'
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_WRK_SCRIPT = """\
local n = 0
request = function()
  n = n + 1
  if n %% 4 == 0 then
    return wrk.format("POST", "%(post)s", {["Content-Type"] = "application/json"}, '%(body)s')
  end
  return wrk.format("GET", "%(get)s")
end
delay = function() return %(delay_ms)d end
"""


@dataclass
class ClientFigures:
    """What one client saw: requests sent, those that failed and why."""

    client: str
    requests: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    note: str = ""

    @property
    def answered_failed(self) -> int:
        """Failures that were an HTTP answer other than 200 (the application's own, e.g. a release that fails)."""
        return sum(n for key, n in self.errors.items() if "HTTP " in key or key == "non-2xx")

    @property
    def transport_failed(self) -> int:
        """Failures without an answer: reset, refused, closed on a reused connection, timeout."""
        return self.failed - self.answered_failed

    def to_dict(self) -> dict:
        return {
            "client": self.client,
            "requests": self.requests,
            "failed": self.failed,
            "transport_failed": self.transport_failed,
            "errors": self.errors,
            "note": self.note,
        }


def missing_tools() -> list[str]:
    return [tool for tool in ("wrk", "hey") if shutil.which(tool) is None]


class _Process:
    """A load generator run until stop(): SIGINT makes wrk and hey print their summary."""

    name = ""

    def argv(self) -> list[str]:
        raise NotImplementedError

    def parse(self, text: str) -> ClientFigures:
        raise NotImplementedError

    def start(self):
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return self

    def stop(self) -> ClientFigures:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _err = self.proc.communicate()
        figures = self.parse(out or "")
        if not figures.requests:
            figures.note = "no summary: " + (out or "")[-300:]
        return figures


class Wrk(_Process):
    """wrk, keep-alive: `connections` connections, each paced to one request every `delay_ms`."""

    def __init__(self, base_url: str, connections: int = 3, delay_ms: int = 60):
        self.name = "wrk"
        self.base_url, self.connections = base_url.rstrip("/"), connections
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        script.write(
            _WRK_SCRIPT % {"post": POST_PATH, "get": GET_PATH, "body": POST_BODY.decode(), "delay_ms": delay_ms}
        )
        script.close()
        self.script = script.name

    def argv(self) -> list[str]:
        return [
            "wrk",
            "-t1",
            "-c%d" % self.connections,
            "-d3600s",
            "--timeout",
            "10s",
            "-s",
            self.script,
            self.base_url + "/",
        ]

    def parse(self, text: str) -> ClientFigures:
        figures = ClientFigures(self.name)
        match = re.search(r"(\d+) requests in", text)
        figures.requests = int(match.group(1)) if match else 0
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
        if errors:
            for kind, count in zip(("connect", "read", "write", "timeout"), errors.groups(), strict=False):
                if int(count):
                    figures.errors["socket %s" % kind] = int(count)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        if non2xx:
            figures.errors["non-2xx"] = int(non2xx.group(1))
        figures.failed = sum(figures.errors.values())
        return figures


class Hey(_Process):
    """hey: `workers` workers at `qps` requests/s each, one method and path (keep-alive unless told)."""

    def __init__(self, base_url: str, method: str, keepalive: bool = True, workers: int = 3, qps: float = 10):
        self.method, self.keepalive, self.workers, self.qps = method, keepalive, workers, qps
        self.url = base_url.rstrip("/") + (POST_PATH if method == "POST" else GET_PATH)
        self.name = "hey %s%s" % (method, "" if keepalive else " -disable-keepalive")

    def argv(self) -> list[str]:
        argv = ["hey", "-z", "3600s", "-c", str(self.workers), "-q", "%g" % self.qps, "-t", "10", "-m", self.method]
        if self.method == "POST":
            argv += ["-T", "application/json", "-d", POST_BODY.decode()]
        if not self.keepalive:
            argv.append("-disable-keepalive")
        return [*argv, self.url]

    def parse(self, text: str) -> ClientFigures:
        figures = ClientFigures(self.name)
        statuses = text.split("Status code distribution:", 1)[1] if "Status code distribution:" in text else ""
        statuses = statuses.split("Error distribution:", 1)[0]
        for code, count in re.findall(r"\[(\d{3})\]\s+(\d+) responses", statuses):
            figures.requests += int(count)
            if code != "200":
                figures.errors["HTTP %s" % code] = figures.errors.get("HTTP %s" % code, 0) + int(count)
        if "Error distribution:" in text:
            for count, what in re.findall(r"\[(\d+)\]\s+(.+)", text.split("Error distribution:", 1)[1]):
                figures.requests += int(count)
                key = what.strip().rsplit(": ", 1)[-1][:60]  # "Get "http://...": EOF" -> "EOF"
                figures.errors[key] = figures.errors.get(key, 0) + int(count)
        figures.failed = sum(figures.errors.values())
        return figures


class HeyPair:
    """hey for GET (3 workers) and POST (1 worker) at once, as one client in the figures."""

    def __init__(self, base_url: str, keepalive: bool = True, qps: float = 10):
        self.parts = [Hey(base_url, "GET", keepalive, 3, qps), Hey(base_url, "POST", keepalive, 1, qps)]
        self.name = "hey" + ("" if keepalive else " -disable-keepalive")

    def start(self):
        for part in self.parts:
            part.start()
        return self

    def stop(self) -> ClientFigures:
        figures = ClientFigures(self.name)
        for part in self.parts:
            one = part.stop()
            figures.requests += one.requests
            figures.failed += one.failed
            for key, count in one.errors.items():
                figures.errors["%s %s" % (part.method, key)] = count
            figures.note = (figures.note + " " + one.note).strip()
        return figures


class AnsweredError(Exception):
    """An answer other than 200: the connection is fine and stays in use."""


class KeepAliveLoad:
    """The project's own client in keep-alive mode: `threads` persistent connections, 3 GET : 1 POST, paced to
    `rate` requests/s in all. A failure on a reused connection is counted apart; the connection is then opened
    anew (as a browser would, once)."""

    name = "own keep-alive"

    def __init__(self, host: str, port: int = 80, threads: int = 4, rate: float = 48.0):
        self.host, self.port = host, port
        self.interval = threads / rate
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.requests = self.failed = self.failed_reused = 0
        self.errors: dict[str, int] = {}
        self.ok_times: list[float] = []
        self.versions: dict[str, int] = {}
        self.version_times: list[tuple[float, str]] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _one(self, conn: http.client.HTTPConnection, n: int) -> str:
        if n % 4 == 3:
            conn.request("POST", POST_PATH, body=POST_BODY, headers={"Content-Type": "application/json"})
        else:
            conn.request("GET", GET_PATH)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise AnsweredError("HTTP %d" % resp.status)
        if n % 4 != 3:
            return str(json.loads(body).get("version", ""))
        return ""

    def _run(self, index: int) -> None:
        conn, used = None, 0
        next_at = time.monotonic() + index * self.interval / len(self.threads)
        n = index
        while not self.stop_event.is_set():
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += self.interval
            n += 1
            if conn is None:
                conn, used = http.client.HTTPConnection(self.host, self.port, timeout=10), 0
            reused = used > 0
            try:
                version = self._one(conn, n)
                used += 1
                with self.lock:
                    self.requests += 1
                    self.ok_times.append(time.monotonic())
                    if version:
                        self.versions[version] = self.versions.get(version, 0) + 1
                        self.version_times.append((self.ok_times[-1], version))
            except AnsweredError as exc:
                used += 1
                with self.lock:
                    self.requests += 1
                    self.failed += 1
                    self.errors[str(exc)] = self.errors.get(str(exc), 0) + 1
                continue
            except (OSError, http.client.HTTPException, ValueError) as exc:
                key = "%s%s" % (type(exc).__name__, " (reused connection)" if reused else "")
                with self.lock:
                    self.requests += 1
                    self.failed += 1
                    self.failed_reused += int(reused)
                    self.errors[key] = self.errors.get(key, 0) + 1
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def start(self) -> KeepAliveLoad:
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> ClientFigures:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(15)
        self.ended = time.monotonic()
        note = "%d of the failures on a reused connection" % self.failed_reused if self.failed else ""
        return ClientFigures(self.name, self.requests, self.failed, dict(self.errors), note)

    def first_version_after(self, start: float, version: str) -> float | None:
        """Seconds from `start` (time.monotonic) to the first answer from `version`."""
        with self.lock:
            hits = [at for at, seen in self.version_times if at >= start and seen == version]
        return round(min(hits) - start, 2) if hits else None

    def longest_gap(self) -> float:
        """Longest time without a successful answer, from start to stop."""
        times = [self.started, *sorted(self.ok_times), getattr(self, "ended", time.monotonic())]
        return round(max(b - a for a, b in itertools.pairwise(times)), 3)


# -- streams held open across the change ----------------------------------------------------------------


@dataclass
class SessionVerdict:
    kind: str
    planned_s: float
    lasted_s: float = 0.0
    complete: bool = False
    detail: str = ""
    versions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "planned_s": self.planned_s,
            "lasted_s": round(self.lasted_s, 2),
            "complete": self.complete,
            "detail": self.detail,
            "versions": self.versions,
        }


class SseStream(threading.Thread):
    """GET /sse?events=N&interval=I through Nginx; complete when every event came in order, then the final
    `event: end` (not a "cut" one), then the clean end of the body."""

    def __init__(self, host: str, seconds: float, port: int = 80, interval: float = 0.5, path: str = "/sse"):
        super().__init__(daemon=True)
        self.host, self.port, self.interval, self.path = host, port, interval, path
        self.events = max(1, int(seconds / interval))
        self.verdict = SessionVerdict("sse", round(self.events * interval, 1))

    def run(self) -> None:
        began = time.monotonic()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        seen: list[int] = []
        versions: list[str] = []
        end: dict | None = None
        try:
            conn.request("GET", "%s?events=%d&interval=%g" % (self.path, self.events, self.interval))
            resp = conn.getresponse()
            if resp.status != 200:
                self.verdict.detail = "HTTP %d" % resp.status
                return
            event = ""
            while True:
                line = resp.readline()
                if not line:
                    break
                text = line.decode().rstrip("\n")
                if text.startswith("event: "):
                    event = text[len("event: ") :]
                elif text.startswith("data: "):
                    data = json.loads(text[len("data: ") :])
                    if event == "end":
                        end = data
                    else:
                        seen.append(int(data["n"]))
                        if data.get("version") and data["version"] not in versions:
                            versions.append(data["version"])
                elif not text:
                    event = ""
            resp.read()  # raises IncompleteRead when the chunked body did not end cleanly
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.verdict.detail = "%s after %d of %d events" % (type(exc).__name__, len(seen), self.events)
        finally:
            conn.close()
            self.verdict.lasted_s = time.monotonic() - began
            self.verdict.versions = versions
        if self.verdict.detail:
            return
        in_order = seen == list(range(self.events))
        if end is None:
            self.verdict.detail = "no final event after %d of %d events" % (len(seen), self.events)
        elif end.get("cut"):
            self.verdict.detail = "cut (%s) after %d of %d events" % (end["cut"], len(seen), self.events)
        elif not in_order:
            self.verdict.detail = "events missing or out of order (%d of %d)" % (len(seen), self.events)
        else:
            self.verdict.complete = True


class WebSocketSession(threading.Thread):
    """GET /ws/echo upgraded through Nginx, one text message every `interval` for `seconds`, each echo checked in
    order, then the close handshake started by the client; complete when all of that happened."""

    def __init__(self, host: str, seconds: float, port: int = 80, interval: float = 0.5, path: str = "/ws/echo"):
        super().__init__(daemon=True)
        self.host, self.port, self.interval, self.path = host, port, interval, path
        self.messages = max(1, int(seconds / interval))
        self.verdict = SessionVerdict("websocket", round(self.messages * interval, 1))
        self.buf = b""

    def _recv_exact(self, sock: socket.socket, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _frame(self, sock: socket.socket) -> tuple[int, bytes]:
        first, second = self._recv_exact(sock, 2)
        n = second & 0x7F
        if n == 126:
            n = int.from_bytes(self._recv_exact(sock, 2), "big")
        elif n == 127:
            n = int.from_bytes(self._recv_exact(sock, 8), "big")
        return first & 0x0F, self._recv_exact(sock, n)

    @staticmethod
    def _send(sock: socket.socket, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        sock.sendall(
            bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        )

    def _handshake(self, sock: socket.socket) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (self.path, self.host, key)
            ).encode()
        )
        while b"\r\n\r\n" not in self.buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self.buf += chunk
        head, _blank, self.buf = self.buf.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 101 " not in status + " ":
            raise ConnectionError("handshake answered %r" % status)
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest())
        if accept not in head:
            raise ConnectionError("handshake without the right Sec-WebSocket-Accept")

    def run(self) -> None:
        began = time.monotonic()
        echoed = 0
        try:
            sock = socket.create_connection((self.host, self.port), timeout=30)
        except OSError as exc:
            self.verdict.detail = "connect: %s" % exc
            return
        try:
            self._handshake(sock)
            for i in range(self.messages):
                self._send(sock, 0x1, ("message %d" % i).encode())
                opcode, payload = self._frame(sock)
                if opcode == 0x8:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 0
                    self.verdict.detail = "closed by the server (%d) after %d of %d echoes" % (
                        code,
                        echoed,
                        self.messages,
                    )
                    return
                if (opcode, payload) != (0x1, ("message %d" % i).encode()):
                    self.verdict.detail = "echo %d wrong or out of order" % i
                    return
                echoed += 1
                time.sleep(self.interval)
            self._send(sock, 0x8, (1000).to_bytes(2, "big"))
            opcode, _payload = self._frame(sock)
            if opcode != 0x8:
                self.verdict.detail = "no close frame in answer to ours"
                return
            self.verdict.complete = True
        except (OSError, ValueError) as exc:
            self.verdict.detail = "%s: %s after %d of %d echoes" % (type(exc).__name__, exc, echoed, self.messages)
        finally:
            sock.close()
            self.verdict.lasted_s = time.monotonic() - began


def open_sessions(
    host: str, port: int = 80, streams: int = 20, sessions: int = 5, shortest_s: float = 30.0, longest_s: float = 60.0
) -> list[threading.Thread]:
    """`streams` SSE streams lasting from shortest_s to longest_s, and `sessions` WebSocket sessions, started."""
    span = longest_s - shortest_s
    started: list[threading.Thread] = [
        SseStream(host, shortest_s + span * i / max(streams - 1, 1), port) for i in range(streams)
    ]
    started += [WebSocketSession(host, shortest_s + span * i / max(sessions - 1, 1), port) for i in range(sessions)]
    for thread in started:
        thread.start()
    return started


def session_figures(threads: list[threading.Thread], timeout_s: float = 180.0) -> dict:
    """Wait for the sessions; completed / cut counts and the first few details of the incomplete ones."""
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    verdicts = [t.verdict for t in threads]  # type: ignore[attr-defined]
    figures = {}
    for kind in ("sse", "websocket"):
        mine = [v for v in verdicts if v.kind == kind]
        bad = [v for v in mine if not v.complete]
        figures[kind] = {
            "opened": len(mine),
            "completed": len(mine) - len(bad),
            "cut": len(bad),
            "details": sorted({v.detail for v in bad})[:4],
            "versions": sorted({ver for v in mine for ver in v.versions}),
        }
    return figures


def run_clients(host: str, port: int = 80, rate_scale: float = 1.0) -> list:
    """wrk, hey (keep-alive), hey -disable-keepalive and the own keep-alive client, started (~170 requests/s)."""
    base = "http://%s:%d" % (host, port)
    return [
        Wrk(base, connections=3, delay_ms=int(60 / rate_scale)).start(),
        HeyPair(base, keepalive=True, qps=10 * rate_scale).start(),
        HeyPair(base, keepalive=False, qps=10 * rate_scale).start(),
        KeepAliveLoad(host, port, threads=4, rate=48 * rate_scale).start(),
    ]


def stop_clients(clients: list) -> dict[str, ClientFigures]:
    return {client.name: client.stop() for client in clients}


__all__ = [
    "ClientFigures",
    "Hey",
    "HeyPair",
    "KeepAliveLoad",
    "SessionVerdict",
    "SseStream",
    "WebSocketSession",
    "Wrk",
    "missing_tools",
    "open_sessions",
    "run_clients",
    "session_figures",
    "stop_clients",
]
