# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The nginx role's routing with the real binaries: its nginx.conf and site rendered from the role's templates,
the real nginx and the real dnsmasq (as opsbook-resolver.service runs it), stdlib backends on two loopback
addresses. A switch is a write of the service's hosts file (docs/routing.md): keep-alive clients lose nothing and
Nginx is never reloaded; a WebSocket route completes a real handshake and echoes a frame."""

from __future__ import absolute_import, annotations, division, print_function

import base64
import hashlib
import http.client
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jinja2
import pytest
import yaml

from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.traffic import gate_block_serves
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import Server, sync_upstream
from ansible_collections.opsbook.stack.tests.unit.http_fixtures import free_port, free_ports

ROLE = Path(__file__).resolve().parents[4] / "roles" / "nginx"
# An ordinary location gives up on a silent upstream after PROXY_READ_S; the test stream pauses longer.
PROXY_READ_S, STREAM_GAP_S = 1, 2.0
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"

# Under CI a skip for this reason fails (tests/unit/conftest.py: DEPS_SKIP_REASON).
pytestmark = pytest.mark.skipif(
    not (os.path.exists(NGINX) and os.path.exists(DNSMASQ) and os.geteuid() == 0),
    reason="needs root, nginx and dnsmasq (./dev deps installs nginx-light and dnsmasq-base)",
)


# --------------------------------------------------------------------------------------------------------
# The role's templates, rendered as ansible.builtin.template would
# --------------------------------------------------------------------------------------------------------


def role_variables(overrides: dict) -> dict:
    """defaults + vars of the role with overrides, templated values resolved (a few passes, like Ansible's lazy
    evaluation)."""
    raw = {
        **yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()),
        **yaml.safe_load((ROLE / "vars" / "main.yml").read_text()),
        **overrides,
    }
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["regex_escape"] = re.escape
    env.filters["relpath"] = os.path.relpath
    env.tests["match"] = lambda value, pattern: re.match(pattern, value) is not None
    context = {"ansible_facts": {"distribution": "Debian"}, "ansible_managed": "test", **raw}
    for _attempt in range(4):
        for key, value in raw.items():
            if isinstance(value, str) and ("{{" in value or "{%" in value):
                try:
                    rendered = env.from_string(value).render(**context).strip()
                except jinja2.UndefinedError:
                    continue
                try:
                    context[key] = yaml.safe_load(rendered) if rendered[:1] in "[{" else rendered
                except yaml.YAMLError:
                    context[key] = rendered
    return context


def render(template: str, context: dict) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(ROLE / "templates")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
    )
    env.filters["relpath"] = os.path.relpath
    return env.get_template(template).render(**context)


def render_tree(conf: Path, overrides: dict, gate_port: int) -> dict:
    """The role's files as it lays them out under /etc/nginx, rendered into conf (nginx.conf, the site, the
    project's gate); returns the template context."""
    context = role_variables(
        {"__nginx_conf_dir": str(conf), "nginx_upstream_dir": str(conf / "upstreams.d"), **overrides}
    )
    for sub in ("conf.d", "modules-enabled", "sites-enabled", "upstreams.d/hosts.d"):
        (conf / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy("/etc/nginx/mime.types", conf / "mime.types")
    (conf / "nginx.conf").write_text(render("nginx.conf.j2", context))
    (conf / "conf.d" / "opsbook-site.conf").write_text(render("site.conf.j2", context))
    (conf / context["__nginx_gate_dest"]).write_text(render("gate.conf.j2", {**context, "nginx_gate_port": gate_port}))
    return context


# --------------------------------------------------------------------------------------------------------
# A backend with a WebSocket echo, on a loopback address
# --------------------------------------------------------------------------------------------------------


class Backend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.startswith("/ws/") and self.headers.get("Upgrade", "").lower() == "websocket":
            self._websocket()
            return
        if "/events" in self.path:
            self._events()
            return
        body = ("%s %s\n" % (self.server.server_address[0], self.headers.get("Connection", "-"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _events(self) -> None:
        """Two SSE events STREAM_GAP_S apart, chunked; then the end of the stream."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for number in (1, 2):
            event = b"data: %d\n\n" % number
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
            if number == 1:
                time.sleep(STREAM_GAP_S)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _websocket(self) -> None:
        accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.flush()
        head = self.rfile.read(2)
        length = head[1] & 0x7F
        mask = self.rfile.read(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
        self.wfile.write(bytes([0x81, len(payload)]) + payload)
        self.wfile.flush()
        self.close_connection = True

    do_GET = _answer
    do_POST = _answer


def serve(address: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((address, port), Backend)
    server.daemon_threads = True
    server.request_queue_size = 128
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --------------------------------------------------------------------------------------------------------
# The stack: dnsmasq + nginx from the role's files
# --------------------------------------------------------------------------------------------------------


class Stack:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = free_port("127.0.0.2")
        self.http_port, self.resolver_port, self.gate_port, stub_status_port = free_ports(4)
        self.conf = tmp / "conf"
        self.upstreams = self.conf / "upstreams.d"
        context = render_tree(
            self.conf,
            {
                "nginx_user": "root",
                "nginx_worker_processes": 2,
                "nginx_pid_file": str(tmp / "nginx.pid"),
                "nginx_error_log": str(tmp / "error.log"),
                "nginx_access_log": str(tmp / "access.log"),
                "nginx_http_port": self.http_port,
                "nginx_listen_ipv6": False,
                "nginx_stub_status_listen": "127.0.0.1:%d" % stub_status_port,
                "nginx_resolver_port": self.resolver_port,
                "nginx_compose_project": "demo",
                "nginx_proxy_read_timeout": "%ds" % PROXY_READ_S,
                "nginx_upstreams": [{"service": "backend", "port": self.port}],
                "nginx_routes": [
                    {"path": "/ws/", "upstream": "backend", "websocket": True},
                    {"path": "/chat/", "upstream": "backend", "streaming": True},
                    {"path": "/", "upstream": "backend"},
                ],
            },
            self.gate_port,
        )
        self.site = (self.conf / "conf.d" / "opsbook-site.conf").read_text()
        assert context["__nginx_gate_dest"] == "upstreams.d/demo_gate.conf"
        self.gate = (self.conf / context["__nginx_gate_dest"]).read_text()
        self.backends = [serve("127.0.0.2", self.port), serve("127.0.0.3", self.port)]
        self.switch("127.0.0.2")
        # As the role's opsbook-resolver.service starts it (its ExecStart, without the unit file's paths).
        self.dnsmasq = subprocess.Popen(
            [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-negcache",
             "--hostsdir=%s" % (self.upstreams / "hosts.d"), "--listen-address=127.0.0.1", "--bind-interfaces",
             "--port=%d" % self.resolver_port, "--local-ttl=1", "--pid-file=", "--log-facility=%s" % (tmp / "dns.log")]
        )  # fmt: skip
        test = subprocess.run(
            [NGINX, "-t", "-c", str(self.conf / "nginx.conf")], capture_output=True, text=True, check=False
        )
        assert test.returncode == 0, test.stderr
        self.nginx = subprocess.Popen([NGINX, "-c", str(self.conf / "nginx.conf"), "-g", "daemon off;"])
        self.wait_until_serving()

    def switch(self, *addresses: str) -> bool:
        servers = [Server("%s:%d" % (a, self.port), comment="demo-backend-%d" % i) for i, a in enumerate(addresses)]
        return sync_upstream("demo", "backend", servers=servers, directory=str(self.upstreams)).changed

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=2)
                conn.request("GET", "/")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, (self.tmp / "error.log").read_text()
            time.sleep(0.1)

    def workers(self) -> set[int]:
        pids = set()
        for entry in os.listdir("/proc"):
            try:
                with open("/proc/%s/stat" % entry) as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == self.nginx.pid:
                        pids.add(int(entry))
            except (OSError, ValueError, IndexError):
                continue
        return pids

    def close(self) -> None:
        for process in (self.nginx, self.dnsmasq):
            process.terminate()
            process.wait(10)
        for backend in self.backends:
            backend.shutdown()
            backend.server_close()


@pytest.fixture
def stack():
    # Not tmp_path: dnsmasq reads its hosts directory as nobody, and pytest's directories are root's only.
    tmp = Path(tempfile.mkdtemp(prefix="opsbook-routing-"))
    tmp.chmod(0o755)
    running = Stack(tmp)
    try:
        yield running
    finally:
        running.close()
        shutil.rmtree(tmp, ignore_errors=True)


def keep_alive_client(port: int, stop: threading.Event, tally: dict, lock: threading.Lock) -> None:
    """One connection for every request, 3 GET : 1 POST; any failure on it counts."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    n = 0
    while not stop.is_set():
        method = "POST" if n % 4 == 3 else "GET"
        try:
            conn.request(method, "/api/x", body=b"x=1" if method == "POST" else None)
            response = conn.getresponse()
            body = response.read().decode()
            with lock:
                key = body.split()[0] if response.status == 200 else "status %d" % response.status
                tally[key] = tally.get(key, 0) + 1
        except (OSError, http.client.HTTPException) as exc:
            with lock:
                tally.setdefault("errors", []).append("%s %s" % (method, exc.__class__.__name__))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        n += 1
        time.sleep(0.005)
    conn.close()


def test_the_role_renders_the_gate_the_upgrade_recognises(stack):
    """An upgrade of any service of the project opens its gate without a reload (docs/routing.md): the role
    renders the gate's map for every service, and a request without the service's X-Opsbook-Gate gets nothing."""
    host = "demo_backend_gate.opsbook.internal"
    assert gate_block_serves(stack.gate, stack.gate_port, host, stack.port, "backend")
    assert not gate_block_serves(stack.gate, stack.gate_port, host, stack.port + 1, "backend")
    assert not gate_block_serves(stack.gate, stack.gate_port, host, stack.port, "frontend")
    gate = "demo_backend_gate"
    sync_upstream(name=gate, project="demo", service="backend_gate", servers=[Server("127.0.0.3:%d" % stack.port)],
                  directory=str(stack.upstreams))  # fmt: skip
    deadline = time.monotonic() + 3
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", stack.gate_port, timeout=5)
        conn.request("GET", "/health", headers={"X-Opsbook-Gate": "backend"})
        response = conn.getresponse()
        if response.status == 200:
            assert response.read().decode().startswith("127.0.0.3")
            break
        assert time.monotonic() < deadline, "the gate does not answer 3 s after its hosts file was written"
        time.sleep(0.1)
    conn = http.client.HTTPConnection("127.0.0.1", stack.gate_port, timeout=5)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 502  # no service named: the gate sends it nowhere
    conn.close()


def test_switches_under_keep_alive_load_lose_no_request_and_reload_nothing(stack):
    workers = stack.workers()
    assert len(workers) == 2
    stop, lock, tally = threading.Event(), threading.Lock(), {}
    clients = [
        threading.Thread(target=keep_alive_client, args=(stack.http_port, stop, tally, lock)) for _client in range(4)
    ]
    for client in clients:
        client.start()
    try:
        # Each state lasts longer than the resolver's validity (1 s) plus a margin, so every switch must be seen:
        # with 0.4 s states, every re-resolution can fall in the same state (a loaded unit run saw one backend only).
        for index in range(6):
            assert stack.switch("127.0.0.3" if index % 2 == 0 else "127.0.0.2")
            time.sleep(1.5)
    finally:
        stop.set()
        for client in clients:
            client.join(10)
    assert tally.get("errors", []) == []
    assert not [key for key in tally if key.startswith("status")]
    # Both backends served: the switches took effect, within the resolver's one second.
    assert tally.get("127.0.0.2", 0) > 50 and tally.get("127.0.0.3", 0) > 50, tally
    assert stack.workers() == workers  # the same workers: Nginx was never reloaded


def test_a_switch_takes_effect_within_the_resolver_validity(stack):
    assert stack.switch("127.0.0.3")
    deadline = time.monotonic() + 2.5
    conn = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=5)
    while True:
        conn.request("GET", "/")
        if conn.getresponse().read().decode().startswith("127.0.0.3"):
            break
        assert time.monotonic() < deadline, "still on the old backend 2.5 s after the switch"
        time.sleep(0.05)
    assert not stack.switch("127.0.0.3")  # the same addresses: nothing written


def test_an_ordinary_route_sends_no_connection_header_upstream(stack):
    conn = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=5)
    conn.request("GET", "/api/x", headers={"Connection": "keep-alive"})
    assert conn.getresponse().read().decode().split() == ["127.0.0.2", "-"]


def test_a_websocket_route_completes_the_handshake_and_echoes(stack):
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", stack.http_port), timeout=5) as sock:
        sock.sendall(
            (
                "GET /ws/echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        status, *headers = head.decode().split("\r\n")
        assert status.startswith("HTTP/1.1 101"), head
        expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        assert "Sec-WebSocket-Accept: %s" % expected in headers
        payload, mask = b"hello through nginx", os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        sock.sendall(struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)
        frame = sock.recv(2)
        assert frame[0] == 0x81
        echoed = b""
        while len(echoed) < frame[1]:
            echoed += sock.recv(frame[1] - len(echoed))
        assert echoed == payload
    assert "proxy_read_timeout 3600s;  # nginx_websocket_timeout" in stack.site


def read_stream(port: int, path: str) -> tuple[bytes, str]:
    """The body of a stream through Nginx, and how it ended: "complete" or the exception's name."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    body, ended = b"", "complete"
    try:
        while True:
            chunk = response.read1(64)
            if not chunk:
                break
            body += chunk
    except http.client.IncompleteRead as exc:
        body, ended = body + exc.partial, type(exc).__name__
    conn.close()
    return body, ended


def test_a_streaming_route_keeps_a_quiet_stream_that_an_ordinary_route_cuts(stack):
    """A route with streaming true is an SSE location of its own upstream (astron-agent streams from two
    services): a chat answer that pauses longer than the ordinary read timeout (an LLM thinking) reaches its end.
    The same stream on an ordinary route is cut after nginx_proxy_read_timeout, which is what a chat user would
    see without the option."""
    body, ended = read_stream(stack.http_port, "/chat/events")
    assert ended == "complete" and b"data: 1" in body and b"data: 2" in body, (ended, body)
    body, ended = read_stream(stack.http_port, "/other/events")
    assert ended != "complete" and b"data: 2" not in body, (ended, body)
    chat = stack.site.split("# >>> nginx_routes[1]")[1].split("# <<< nginx_routes[1]")[0]
    assert "proxy_buffering off;" in chat and "nginx_streaming_read_timeout" in chat, chat
