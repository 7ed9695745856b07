# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Make `ansible_collections.opsbook.stack` importable under plain pytest.

The modules import their module_utils as `ansible_collections.opsbook.stack.plugins.module_utils...`, which
resolves only when the repository sits at `<dir>/ansible_collections/opsbook/stack` with `<dir>` on sys.path.
ansible-test provides that layout; for plain pytest a temporary tree with a symlink to this checkout does.
`ansible_collections` is a namespace package, so this tree coexists with the collections that the `ansible`
package installs into site-packages.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import typing as t
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _collection_root() -> tuple[Path, Path | None]:
    """The directory to put on sys.path, and a temporary directory to remove at the end (or None)."""
    parts = REPO_ROOT.parts
    if len(parts) >= 3 and parts[-3:] == ("ansible_collections", "opsbook", "stack"):
        return REPO_ROOT.parents[2], None  # already checked out in a collection tree (ansible-test)
    tmp = Path(tempfile.mkdtemp(prefix="opsbook-stack-pytest-"))
    namespace = tmp / "ansible_collections" / "opsbook"
    namespace.mkdir(parents=True)
    os.symlink(REPO_ROOT, namespace / "stack", target_is_directory=True)
    return tmp, tmp


_ROOT, _TMP = _collection_root()
sys.path.insert(0, str(_ROOT))

# Importable only now that the collection is on sys.path.
from ansible_collections.opsbook.stack.tests.unit.http_fixtures import QuietHandler  # pylint: disable=wrong-import-position


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "docker: needs the real Docker Engine on /var/run/docker.sock or a sandbox image; "
        "`./dev check` deselects these with -m 'not docker'",
    )


# Fixtures that start containers or talk to the real Engine. A test that uses one needs Docker even when its
# module forgot @pytest.mark.docker, so it is marked here (names as defined in the test modules and
# tests/unit/monitoring_fixtures.py).
DOCKER_FIXTURES = frozenset({"monitoring", "engine", "dbs", "redis"})
# promtool and amtool run from the sandbox images with `docker run` unless they are on PATH
# (tests/unit/roles/monitoring/conftest.py); with a local binary those tests need no Docker.
DOCKER_UNLESS_ON_PATH = ("promtool", "amtool")


def _needs_docker(item: pytest.Item) -> bool:
    fixtures = set(getattr(item, "fixturenames", ()))
    if fixtures & DOCKER_FIXTURES:
        return True
    return any(tool in fixtures and shutil.which(tool) is None for tool in DOCKER_UNLESS_ON_PATH)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _needs_docker(item) and item.get_closest_marker("docker") is None:
            item.add_marker(pytest.mark.docker)


# Under CI a Docker test that cannot reach the Engine or a sandbox image fails instead of skipping: a green CI run
# must mean the real-container tests ran. Locally (no CI) they still skip, so `./dev check` works without Docker.
# The same for a test that skips for want of a system package `./dev deps` installs (its reason says so): a fresh
# machine once skipped the routing tests without a word because dnsmasq was not among them.
# Skips for other reasons (no root for a tmpfs, no ansible-runner) stay skips.
DOCKER_SKIP_REASON = re.compile(r"docker|engine|image|sandbox|socket", re.IGNORECASE)
DEPS_SKIP_REASON = "./dev deps installs"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> t.Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and _in_ci()):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if DEPS_SKIP_REASON in reason:
        report.outcome = "failed"
        report.longrepr = "CI=true: %s would have skipped (%s). Run ./dev deps as root." % (item.nodeid, reason)
        return
    if item.get_closest_marker("docker") is None or not DOCKER_SKIP_REASON.search(reason):
        return
    report.outcome = "failed"
    report.longrepr = (
        "CI=true: %s needs Docker and would have skipped (%s). Under CI a Docker test must run: start the Engine "
        "and build the sandbox images (./dev sandbox), or run without CI=true to skip it locally."
        % (item.nodeid, reason)
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _TMP is not None:
        shutil.rmtree(_TMP, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------
# A local HTTP server for probe tests: real sockets on 127.0.0.1, no network.
# --------------------------------------------------------------------------------------------------------


class _ProbeTargetHandler(QuietHandler):
    """Routes that imitate what health checks meet in the field.

    /ok                200 {"status": "ok"}
    /status/<code>     that status
    /slow?s=0.5        answers after s seconds
    /redirect          302 to /ok
    /echo-host         the Host header in the body
    /flaky?key=k&n=2   503 the first n times per key, then 200
    /sse               an event, then the stream stays open (like an SSE endpoint)
    /trickle           one byte every 0.2 s for ever
    """

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        server = self.server
        if path == "/ok":
            self._send(200, json.dumps({"status": "ok"}).encode())
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), b"status page\n")
        elif path == "/slow":
            time.sleep(float(query.get("s", "0.5")))
            self._send(200, b"slow ok\n")
        elif path == "/redirect":
            self._send(302, b"", {"Location": "/ok"})
        elif path == "/echo-host":
            self._send(200, ("host=%s" % self.headers.get("Host")).encode())
        elif path == "/flaky":
            key = query.get("key", "default")
            with server.lock:  # type: ignore[attr-defined]
                seen = server.counters.get(key, 0)  # type: ignore[attr-defined]
                server.counters[key] = seen + 1  # type: ignore[attr-defined]
            if seen < int(query.get("n", "2")):
                self._send(503, b"warming up\n")
            else:
                self._send(200, b"ready\n")
        elif path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b"data: hello\n\n")
            self.wfile.flush()
            server.stop.wait(10)  # type: ignore[attr-defined]
        elif path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _byte in range(100):
                if server.stop.wait(0.2):  # type: ignore[attr-defined]
                    break
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    break
        else:
            self._send(404, b"no such route\n")


class _BackloggedHTTPServer(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops the SYNs of a burst of concurrent probes, and the kernel
    # retries them only after a second: that would measure the test server, not the probes.
    request_queue_size = 128


class LocalHTTPServer:
    def __init__(self) -> None:
        self.httpd = _BackloggedHTTPServer(("127.0.0.1", 0), _ProbeTargetHandler)
        self.httpd.daemon_threads = True
        self.httpd.counters = {}  # type: ignore[attr-defined]
        self.httpd.lock = threading.Lock()  # type: ignore[attr-defined]
        self.httpd.stop = threading.Event()  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def __enter__(self) -> LocalHTTPServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.stop.set()  # type: ignore[attr-defined]
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def http_server():
    """One local HTTP server for the whole session (the /flaky counters are keyed per test)."""
    with LocalHTTPServer() as server:
        yield server


@pytest.fixture
def tcp_listener():
    """A listening TCP socket on 127.0.0.1; yields its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def closed_port():
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port
