# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The stdlib Docker client against a fake engine on a unix socket, and against the real engine when present."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import os
import socket
import socketserver
import struct
import threading
import time
import uuid
import warnings
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils import _docker as docker_api
from ansible_collections.opsbook.stack.plugins.module_utils._docker import (
    DockerClient,
    DockerConflict,
    DockerConnectionError,
    DockerNotFound,
    DockerTimeout,
    StreamDemuxer,
    demux_stream,
    negotiate_api_version,
)
from ansible_collections.opsbook.stack.plugins.module_utils._probes import check

REAL_SOCKET = "/var/run/docker.sock"


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


# --------------------------------------------------------------------------------------------------------
# Stream demultiplexing
# --------------------------------------------------------------------------------------------------------


def test_demux_frames():
    data = frame(1, b"out 1\n") + frame(2, b"err 1\n") + frame(1, b"out 2\n")
    assert demux_stream(data) == (b"out 1\nout 2\n", b"err 1\n")


def test_demux_frames_split_anywhere():
    data = frame(1, b"hello ") + frame(2, b"oops") + frame(1, b"world")
    for size in (1, 3, 7, 9, 13):
        demuxer = StreamDemuxer()
        for start in range(0, len(data), size):
            demuxer.feed(data[start : start + size])
        demuxer.close()
        assert (demuxer.stdout, demuxer.stderr) == (b"hello world", b"oops"), size


def test_demux_tty_stream_is_all_stdout():
    assert demux_stream(b"plain tty output\r\n") == (b"plain tty output\r\n", b"")
    assert demux_stream(frame(1, b"x"), tty=True) == (frame(1, b"x"), b"")


def test_demux_limit_truncates():
    demuxer = StreamDemuxer(limit=4)
    demuxer.feed(frame(1, b"0123456789"))
    assert demuxer.stdout == b"0123" and demuxer.truncated


@pytest.mark.parametrize(
    "server, expected",
    [("1.41", "1.41"), ("1.40", "1.40"), ("1.45", "1.43"), ("garbage", docker_api.DEFAULT_API_VERSION)],
)
def test_negotiate_api_version(server, expected):
    assert negotiate_api_version(server) == expected


# --------------------------------------------------------------------------------------------------------
# A fake Docker Engine on a unix socket
# --------------------------------------------------------------------------------------------------------

EXEC_FOR_CONTAINER = {"web": "raw1", "chunky": "chunked1", "slowpoke": "slow1"}
EXEC_OUTPUT = [frame(1, b"mysqld is alive\n"), frame(2, b"warning: using a password\n"), frame(1, b"done\n")]


class FakeEngineHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass

    def address_string(self):
        return "unix"

    def _json(self, code, payload):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _empty(self, code):
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _chunked(self, pieces):
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.docker.multiplexed-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in pieces:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def _hijacked(self, pieces, pause=0.0):
        # What dockerd does for exec start without an Upgrade header: a bare 200, then the raw stream until it
        # closes the connection (no Content-Length, no chunking).
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n")
        for piece in pieces:
            self.wfile.write(piece)
            self.wfile.flush()
            time.sleep(pause)
        self.close_connection = True

    def _route(self, method):
        server = self.server
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        server.requests.append((method, parts.path, query, body))
        path = parts.path
        if path == "/version":
            return self._json(200, {"ApiVersion": server.api_version, "Version": "20.10.24"})
        if path == "/_ping":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            return self.wfile.write(b"OK")
        prefix = "/v%s" % server.api_version
        if not path.startswith(prefix + "/"):
            return self._json(400, {"message": "client version mismatch: %s" % path})
        path = path[len(prefix) :]
        if method == "GET" and path == "/containers/json":
            return self._json(200, [{"Id": "abc", "Names": ["/demo-web-1"]}])
        if method == "GET" and path.endswith("/json") and path.startswith("/containers/"):
            name = path.split("/")[2]
            if name == "missing":
                return self._json(404, {"message": "No such container: missing"})
            return self._json(200, {"Id": name + "0123456789", "State": {"Status": "running", "Running": True}})
        if method == "POST" and path.startswith("/containers/") and path.endswith("/exec"):
            name = path.split("/")[2]
            if name == "stopped":
                return self._json(409, {"message": "Container stopped is not running"})
            return self._json(201, {"Id": EXEC_FOR_CONTAINER[name]})
        if method == "POST" and path == "/exec/raw1/start":
            return self._hijacked(EXEC_OUTPUT, pause=0.01)
        if method == "POST" and path == "/exec/chunked1/start":
            data = b"".join(EXEC_OUTPUT)
            return self._chunked([data[:3], data[3:11], data[11:30], data[30:]])  # headers split across chunks
        if method == "POST" and path == "/exec/slow1/start":
            return self._hijacked([frame(1, b"started\n"), b""], pause=3)
        if method == "GET" and path.startswith("/exec/") and path.endswith("/json"):
            exec_id = path.split("/")[2]
            server.inspects[exec_id] = server.inspects.get(exec_id, 0) + 1
            running = server.inspects[exec_id] == 1  # the stream may end before the exit code is recorded
            return self._json(200, {"ID": exec_id, "Running": running, "ExitCode": None if running else 3})
        if method == "GET" and path == "/containers/web/logs":
            return self._chunked(
                [
                    frame(1, b"GET /health 200\n") + frame(2, b"WARN slow query\n")[:5],
                    frame(2, b"WARN slow query\n")[5:],
                ]
            )
        if method == "POST" and path == "/containers/web/stop":
            return self._empty(204)
        if method == "DELETE" and path == "/containers/web":
            return self._empty(204)
        return self._json(404, {"message": "page not found"})

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_DELETE(self):
        self._route("DELETE")


class FakeEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path, api_version="1.41"):
        super().__init__(path, FakeEngineHandler)
        self.api_version = api_version
        self.requests = []
        self.inspects = {}


@pytest.fixture
def fake_engine(tmp_path):
    path = str(tmp_path / "docker.sock")
    server = FakeEngine(path)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server, "unix://" + path
    finally:
        server.shutdown()
        server.server_close()


def test_version_negotiation_and_ping(fake_engine):
    server, host = fake_engine
    server.api_version = "1.40"
    client = DockerClient(host)
    assert client.ping() is True
    assert client.api_version == "1.40"
    client.inspect_container("web")
    assert server.requests[-1][1] == "/v1.40/containers/web/json"


def test_fixed_api_version_skips_negotiation(fake_engine):
    server, host = fake_engine
    client = DockerClient(host, api_version="1.41")
    client.inspect_container("web")
    assert [r[1] for r in server.requests] == ["/v1.41/containers/web/json"]


def test_inspect_and_not_found(fake_engine):
    _server, host = fake_engine
    client = DockerClient(host)
    assert client.inspect_container("web")["State"]["Running"] is True
    with pytest.raises(DockerNotFound) as excinfo:
        client.inspect_container("missing")
    assert excinfo.value.status == 404
    assert excinfo.value.explanation == "No such container: missing"
    assert "HTTP 404: No such container: missing" in str(excinfo.value)


@pytest.mark.parametrize("container", ["web", "chunky"])
def test_exec_run_demultiplexes_stream(fake_engine, container):
    server, host = fake_engine
    result = DockerClient(host).exec_run(container, ["mysqladmin", "ping", "-h", "127.0.0.1"], timeout=5)
    assert result.exit_code == 3
    assert result.stdout == b"mysqld is alive\ndone\n"
    assert result.stderr == b"warning: using a password\n"
    create = next(r for r in server.requests if r[1].endswith("/exec"))
    assert create[3]["Cmd"] == ["mysqladmin", "ping", "-h", "127.0.0.1"]
    assert create[3]["AttachStdout"] and create[3]["AttachStderr"] and not create[3]["Tty"]
    start = next(r for r in server.requests if r[1].endswith("/start"))
    assert start[3] == {"Detach": False, "Tty": False}
    assert server.inspects[EXEC_FOR_CONTAINER[container]] == 2  # waited for Running to turn false


def test_exec_run_timeout(fake_engine):
    _server, host = fake_engine
    started = time.monotonic()
    with pytest.raises(DockerTimeout, match=r"did not finish within 0.5 s"):
        DockerClient(host).exec_run("slowpoke", ["sleep", "60"], timeout=0.5)
    assert time.monotonic() - started < 2


def test_exec_in_stopped_container_is_a_conflict(fake_engine):
    _server, host = fake_engine
    with pytest.raises(DockerConflict) as excinfo:
        DockerClient(host).exec_run("stopped", ["true"])
    assert excinfo.value.explanation == "Container stopped is not running"


def test_exec_command_must_be_argv(fake_engine):
    _server, host = fake_engine
    with pytest.raises(ValueError, match="non-empty list of strings"):
        DockerClient(host).exec_create("web", [])


def test_list_containers_by_labels(fake_engine):
    server, host = fake_engine
    containers = DockerClient(host).list_containers(
        labels={"com.docker.compose.project": "demo", "com.docker.compose.service": "web", "opsbook": None},
        all=True,
    )
    assert containers[0]["Id"] == "abc"
    _method, path, query, _body = server.requests[-1]
    assert path == "/v1.41/containers/json" and query["all"] == "1"
    assert json.loads(query["filters"]) == {
        "label": ["com.docker.compose.project=demo", "com.docker.compose.service=web", "opsbook"]
    }


def test_container_logs_tail(fake_engine):
    server, host = fake_engine
    stdout, stderr = DockerClient(host).container_logs("web", tail=20)
    assert stdout == "GET /health 200\n" and stderr == "WARN slow query\n"
    assert server.requests[-1][2] == {"stdout": "1", "stderr": "1", "tail": "20", "timestamps": "0"}


def test_stop_and_remove(fake_engine):
    server, host = fake_engine
    client = DockerClient(host)
    client.stop_container("web", grace_s=5)
    client.remove_container("web", force=True)
    assert [(r[0], r[1], r[2]) for r in server.requests[-2:]] == [
        ("POST", "/v1.41/containers/web/stop", {"t": "5"}),
        ("DELETE", "/v1.41/containers/web", {"force": "1", "v": "0"}),
    ]


def test_probes_through_the_fake_engine(fake_engine):
    _server, host = fake_engine
    report = check(
        [
            {"type": "container", "name": "web", "container": "web"},
            {
                "type": "exec",
                "name": "ping",
                "container": "web",
                "command": ["mysqladmin", "ping"],
                "expect_rc": 3,
                "stdout_pattern": "alive",
            },
            {"type": "exec", "name": "stopped", "container": "stopped", "command": ["true"]},
        ],
        docker_host=host,
    )
    assert report.failed_probes == ["stopped"]
    assert report.results[2].error == "cannot exec in container 'stopped': Container stopped is not running"


# --------------------------------------------------------------------------------------------------------
# Connection errors an operator has to act on
# --------------------------------------------------------------------------------------------------------


def test_missing_socket(tmp_path):
    with pytest.raises(DockerConnectionError) as excinfo:
        DockerClient("unix://%s/docker.sock" % tmp_path).ping()
    assert "Docker socket %s/docker.sock does not exist" % tmp_path in str(excinfo.value)
    assert "systemctl status docker" in str(excinfo.value)


def test_nothing_listening(tmp_path):
    path = str(tmp_path / "docker.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # bound, never listening: connect() is refused
    try:
        with pytest.raises(DockerConnectionError, match=r"refused the connection on .*dockerd is not running"):
            DockerClient("unix://" + path).ping()
    finally:
        dead.close()


def test_permission_denied(tmp_path, monkeypatch):
    # root passes any socket permission check, so the refusal is simulated where connect() would raise it.
    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(docker_api.UnixHTTPConnection, "connect", denied)
    with pytest.raises(DockerConnectionError) as excinfo:
        DockerClient("unix:///var/run/docker.sock").ping()
    assert "permission denied on Docker socket /var/run/docker.sock" in str(excinfo.value)
    assert "become: true" in str(excinfo.value) and "'docker' group" in str(excinfo.value)


def test_unsupported_docker_host():
    with pytest.raises(DockerConnectionError, match="is not supported"):
        DockerClient("ssh://user@host")


def test_tcp_docker_host_is_parsed():
    client = DockerClient("tcp://127.0.0.1:2375")
    assert client.socket_path is None and client._tcp == ("127.0.0.1", 2375)  # pylint: disable=protected-access


# --------------------------------------------------------------------------------------------------------
# The real engine
# --------------------------------------------------------------------------------------------------------

PREFERRED_IMAGES = ("opsbook/debian:bookworm", "opsbook/sandbox-host:bookworm", "debian:bookworm")
NS = 1_000_000_000


@pytest.fixture(scope="module")
def engine():
    if not os.path.exists(REAL_SOCKET):
        pytest.skip("no Docker Engine socket at %s" % REAL_SOCKET)
    client = DockerClient("unix://" + REAL_SOCKET, timeout=30)
    tags = {tag for image in client.request_json("GET", "/images/json") or [] for tag in image.get("RepoTags") or []}
    image = next((name for name in PREFERRED_IMAGES if name in tags), None)
    if image is None:
        pytest.skip("no local Debian image (%s); build the sandbox base image first" % ", ".join(PREFERRED_IMAGES))
    created = []
    run_id = uuid.uuid4().hex[:8]

    def start(suffix, command, healthcheck=None, wait_running=True):
        name = "opsbook-unit-%s-%s" % (run_id, suffix)
        # Long-running ones remove themselves when their sleep ends, should the teardown below not happen.
        body = {
            "Image": image,
            "Cmd": command,
            "Labels": {"opsbook.test": "unit", "opsbook.run": run_id},
            "HostConfig": {"NetworkMode": "none", "AutoRemove": wait_running},
        }
        if healthcheck:
            body["Healthcheck"] = healthcheck
        client.request("POST", "/containers/create", query={"name": name}, body=body)
        created.append(name)
        client.request("POST", "/containers/%s/start" % name)
        if wait_running:
            wait_for(lambda: client.inspect_container(name)["State"]["Running"])
        return name

    yield client, start, run_id
    for name in created:
        remove_test_container(client, name)


def remove_test_container(client, name):
    """Force-remove, retried: a busy engine can refuse once ("removal already in progress", kill timeout)."""
    for attempt in range(5):
        try:
            client.remove_container(name, force=True)
            return
        except DockerNotFound:
            return
        except docker_api.DockerError as exc:
            if attempt == 4:
                warnings.warn(
                    "test container %s was not removed: %s (docker rm -f %s)" % (name, exc, name), stacklevel=2
                )
            time.sleep(1)


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met within %s s" % timeout)


@pytest.mark.docker
def test_real_engine_exec_and_state(engine):
    client, start, run_id = engine
    name = start("plain", ["sh", "-c", "echo booted; echo warn >&2; exec sleep 300"])

    true = client.exec_run(name, ["true"], timeout=10)
    false = client.exec_run(name, ["false"], timeout=10)
    assert (true.exit_code, false.exit_code) == (0, 1)
    both = client.exec_run(name, ["sh", "-c", "echo to-out; echo to-err >&2; exit 4"], timeout=10)
    assert (both.exit_code, both.stdout, both.stderr) == (4, b"to-out\n", b"to-err\n")
    missing = client.exec_run(name, ["no-such-binary"], timeout=10)
    assert missing.exit_code in (126, 127)

    wait_for(lambda: "booted" in client.container_logs(name, tail=10)[0])
    assert client.container_logs(name, tail=10)[1] == "warn\n"
    listed = client.list_containers(labels={"opsbook.run": run_id})
    assert [c["Names"][0] for c in listed] == ["/" + name]

    report = check(
        [
            {"type": "container", "name": "plain", "container": name, "max_restarts": 0},
            {"type": "exec", "name": "true", "container": name, "command": ["true"]},
            {"type": "exec", "name": "false", "container": name, "command": ["false"]},
            {
                "type": "exec",
                "name": "pattern",
                "container": name,
                "command": ["sh", "-c", "echo mysqld is alive"],
                "stdout_pattern": "is alive$",
            },
        ]
    )
    assert report.failed_probes == ["false"], report.failure_message()
    plain = report.results[0]
    assert plain.status == "running" and plain.health is None and plain.evidence["restart_count"] == 0
    assert report.results[2].error == "exit code 1 (expected 0)"


@pytest.mark.docker
def test_real_engine_health_states(engine):
    client, start, _run_id = engine
    interval = {"Interval": NS // 5, "Timeout": 2 * NS, "Retries": 1}
    good = start("healthy", ["sleep", "300"], {"Test": ["CMD", "true"], **interval})
    bad = start("unhealthy", ["sleep", "300"], {"Test": ["CMD-SHELL", "echo db-down >&2; exit 1"], **interval})
    slow = start("starting", ["sleep", "300"], {"Test": ["CMD", "true"], "Interval": 300 * NS, "StartPeriod": 300 * NS})
    exited = start("exited", ["sh", "-c", "echo bye; exit 3"], wait_running=False)
    wait_for(lambda: client.inspect_container(bad)["State"]["Health"]["Status"] == "unhealthy")
    wait_for(lambda: client.inspect_container(exited)["State"]["Status"] == "exited")

    report = check(
        [
            {"type": "container", "name": "good", "container": good, "retries": 40, "delay": 0.25},
            {"type": "container", "name": "bad", "container": bad},
            {"type": "container", "name": "slow", "container": slow},
            {"type": "container", "name": "exited", "container": exited},
            {"type": "exec", "name": "exec-exited", "container": exited, "command": ["true"]},
            {"type": "container", "name": "ghost", "container": "opsbook-unit-no-such-container"},
        ]
    )
    by_name = {result.name: result for result in report.results}
    assert by_name["good"].ok and by_name["good"].health == "healthy", by_name["good"].error
    assert report.failed_probes == ["bad", "slow", "exited", "exec-exited", "ghost"]

    assert by_name["bad"].health == "unhealthy"
    assert "health is unhealthy" in by_name["bad"].error and "db-down" in by_name["bad"].error
    assert by_name["bad"].evidence["health_log"][-1]["output"] == "db-down"
    assert by_name["slow"].health == "starting"
    assert by_name["slow"].error.startswith("health is starting")
    assert by_name["exited"].error.startswith("container is exited (exit code 3")
    assert "bye" in by_name["exited"].evidence["logs"]
    assert "is not running" in by_name["exec-exited"].error
    assert by_name["ghost"].status == "missing"


# ------------------------------------------------------------------------------------------------------------
# Streaming exec and archives (_docker_streams on DockerClient.hijack / open_stream)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.docker
def test_real_engine_streams_stdin_stdout_and_archives(engine):
    import io
    import tarfile

    from ansible_collections.opsbook.stack.plugins.module_utils import _docker_streams as streams

    client, start, _run_id = engine
    name = start("streams", ["sh", "-c", "exec sleep 300"])
    payload = os.urandom(3 * 1024 * 1024 + 17)  # more than one chunk, not a multiple of anything
    blocks = iter([payload[i : i + 65536] for i in range(0, len(payload), 65536)] + [b""])
    got = bytearray()
    res = streams.exec_stream(
        client,
        name,
        ["sh", "-c", "cat; echo done >&2; exit 3"],
        stdout_sink=got.extend,
        stdin_source=lambda: next(blocks),
    )
    assert res.exit_code == 3 and bytes(got) == payload and res.stdout_bytes == len(payload)
    assert res.head == payload[:64] and res.tail == payload[-256:] and res.stderr == b"done\n"
    small = streams.exec_stream(client, name, ["echo", "hi"], keep_stdout=1024)
    assert (small.exit_code, small.stdout) == (0, b"hi\n")

    data = b"archived\n" * 1000
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("f.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    tar_bytes = buf.getvalue()
    streams.put_archive(client, name, "/tmp", [tar_bytes[:1000], tar_bytes[1000:]], len(tar_bytes))
    out = bytearray()
    assert streams.get_archive(client, name, "/tmp/f.txt", out.extend) == len(out)
    with tarfile.open(fileobj=io.BytesIO(bytes(out))) as tar:
        assert tar.extractfile("f.txt").read() == data
    with pytest.raises(DockerNotFound):
        streams.get_archive(client, name, "/no/such/path", out.extend)
    with pytest.raises(DockerNotFound):
        streams.exec_stream(client, "opsbook-unit-no-such-container", ["true"])
