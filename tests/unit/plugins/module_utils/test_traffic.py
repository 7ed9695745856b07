# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Traffic of a rolling upgrade (docs/routing.md): a switch and the gate are writes of hosts files, no reload;
a switch returns only once no Nginx worker can still pick the old addresses; the gate's server block is written
once per project and port, not at every gate."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import socket
import time

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils._upgrade import traffic as tr
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import Settings
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import Server, hosts_addresses


@pytest.fixture
def gate_listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def traffic(tmp_path, monkeypatch, gate_listener):
    activations = []
    monkeypatch.setattr(tr, "activate", lambda path, content, nginx=None: activations.append((path, content)))
    settings = Settings(project="demo", project_dir=str(tmp_path), upstream_dir=str(tmp_path / "upstreams.d"))
    settings.gate_port = gate_listener
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
    assert 'set $opsbook_gate "demo_backend_gate.opsbook.internal";' in block
    assert "proxy_pass http://$opsbook_gate:8000;" in block
    gate_hosts = tmp_path / "upstreams.d" / "hosts.d" / "demo_backend_gate"
    assert hosts_addresses(gate_hosts.read_text()) == ["172.18.0.4:8000", "172.18.0.5:8000"]
    (tmp_path / "upstreams.d" / "demo_gate.conf").write_text(block)  # what activate would have made live
    traffic.close_gate("backend")
    assert hosts_addresses(gate_hosts.read_text()) == []
    assert gate_hosts.exists()  # emptied, never removed: dnsmasq keeps the names of a removed file
    traffic.open_gate("backend", NEW[:1])
    assert len(traffic.activations) == 1  # the same block: the next gate writes only its hosts file
