# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Traffic of a rolling upgrade (docs/routing.md): a switch and the gate are writes of hosts files, no reload;
a switch returns only once no Nginx worker can still pick the old addresses; the gate's server block is written
once per project and port, not at every gate."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import threading
import time
from http.server import ThreadingHTTPServer

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils._upgrade import traffic as tr
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import Run, Settings, UpgradeError
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.rollout import Rollout
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import Server, hosts_addresses
from ansible_collections.opsbook.stack.tests.unit.http_fixtures import QuietHandler


@pytest.fixture
def traffic(tmp_path, monkeypatch, tcp_listener):
    activations = []
    monkeypatch.setattr(tr, "activate", lambda path, content, nginx=None: activations.append((path, content)))
    settings = Settings(project="demo", project_dir=str(tmp_path), upstream_dir=str(tmp_path / "upstreams.d"))
    settings.gate_port = tcp_listener
    running = tr.Traffic(settings, client=None)
    running.activations = activations
    return running


NEW = [Server("172.18.0.4:8000", comment="demo-backend-3"), Server("172.18.0.5:8000", comment="demo-backend-4")]
OLD = [Server("172.18.0.2:8000", comment="demo-backend-1")]


def test_a_switch_writes_the_hosts_file_and_returns_once_settled(traffic):
    traffic.switch("backend", OLD)
    started = time.monotonic()
    traffic.switch("backend", NEW)
    waited = time.monotonic() - started
    assert traffic.serving("backend") == ["172.18.0.4:8000", "172.18.0.5:8000"]
    assert traffic.activations == []  # no Nginx configuration, no reload
    assert waited >= traffic.resolver_valid_s
    assert time.monotonic() >= traffic.switch_settled_at()
    assert traffic.workers_before_switch == set()  # no reload: no worker of an older configuration
    # The same servers again: nothing written, no wait.
    started = time.monotonic()
    traffic.switch("backend", NEW)
    assert time.monotonic() - started < 0.5


def test_the_gate_block_is_written_once_and_the_gate_name_emptied_when_closed(traffic, tmp_path):
    traffic.open_gate("backend", NEW)
    assert len(traffic.activations) == 1
    path, block = traffic.activations[0]
    assert path == str(tmp_path / "upstreams.d" / "demo_gate.conf")
    assert "listen 127.0.0.1:%d;" % traffic.s.gate_port in block
    # The service the synthetic requests name (X-Opsbook-Gate) maps to its gate name and port.
    assert '"backend" "demo_backend_gate.opsbook.internal:8000";' in block
    assert "proxy_pass http://$opsbook_gate_demo;" in block
    gate_hosts = tmp_path / "upstreams.d" / "hosts.d" / "demo_backend_gate"
    assert hosts_addresses(gate_hosts.read_text()) == ["172.18.0.4:8000", "172.18.0.5:8000"]
    (tmp_path / "upstreams.d" / "demo_gate.conf").write_text(block)  # what activate would have made live
    traffic.close_gate("backend")
    assert hosts_addresses(gate_hosts.read_text()) == []
    assert gate_hosts.exists()  # emptied, never removed: dnsmasq keeps the names of a removed file
    traffic.open_gate("backend", NEW[:1])
    assert len(traffic.activations) == 1  # the same block: the next gate writes only its hosts file


class _Gate:
    """A loopback HTTP server in the gate's place: 502 (what Nginx answers for a name without an address) for
    the first `bad` requests, then 200."""

    def __init__(self, bad: int):
        self.bad, self.seen = bad, 0
        gate = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                gate.seen += 1
                self._send(502 if gate.seen <= gate.bad else 200, b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class _Host:
    def __init__(self, port: int, settles_in: float):
        self.s = Settings(project="demo", project_dir="/nonexistent", gate_requests=5, readiness_path="/health")
        self.s.gate_port = port
        self.docker = self
        self.traffic = self
        self.settles_in = settles_in
        self.closed = 0

    def open_gate(self, service, servers):
        return time.monotonic() + self.settles_in

    def close_gate(self, service):
        self.closed += 1

    def evidence(self, container):
        return {"container": container.name}


def _rollout(host):
    return Rollout(host, Run())


def test_the_gate_retries_a_502_while_a_worker_may_hold_the_closed_gates_answer():
    gate = _Gate(bad=3)
    host = _Host(gate.port, settles_in=1.25)
    started = time.monotonic()
    _rollout(host).through_gate("backend", [])
    assert gate.seen == 3 + 5 and host.closed == 1
    assert time.monotonic() - started < 1.0  # not the whole resolver validity slept away
    gate.server.shutdown()


def test_a_502_once_the_gate_has_settled_fails_it_and_closes_it():
    gate = _Gate(bad=1)
    host = _Host(gate.port, settles_in=0.0)
    with pytest.raises(UpgradeError, match="synthetic request 1 of 5 through Nginx to the new backend"):
        _rollout(host).through_gate("backend", [])
    assert gate.seen == 1 and host.closed == 1
    gate.server.shutdown()


def test_open_gate_returns_when_no_worker_can_hold_the_closed_answer_without_sleeping(traffic):
    started = time.monotonic()
    settled_at = traffic.open_gate("backend", NEW)
    assert time.monotonic() - started < 0.5
    assert settled_at >= started + traffic.resolver_valid_s
