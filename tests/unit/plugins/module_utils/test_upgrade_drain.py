# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The drain of rolling_upgrade/rollback (docs/drain.md): whose Nginx workers count, which connections count,
and that it ends when the last one is done, not at drain_timeout."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import importlib
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.drain import (
    Target,
    _parse_endpoint,
    drain,
    established_connections,
    lingering_workers,
    nginx_master,
    nginx_workers,
    target_of,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import Container, Run, Settings
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.rollout import Rollout
from ansible_collections.opsbook.stack.tests.unit.http_fixtures import free_port

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def row(n: int, local: str, remote: str, state: str = "01") -> str:
    return "   %d: %s %s %s 00000000:00000000 00:00000000 00000000     0        0 %d\n" % (n, local, remote, state, n)


def test_parse_endpoint_reads_ipv4_ipv6_and_mapped_addresses():
    assert _parse_endpoint("0100007F:1F40") == ("127.0.0.1", 8000)
    assert _parse_endpoint("050012AC:1F40") == ("172.18.0.5", 8000)
    assert _parse_endpoint("00000000000000000000000001000000:0050") == ("::1", 80)
    # ::ffff:172.18.0.5, as a dual-stack socket shows an IPv4 peer
    assert _parse_endpoint("0000000000000000FFFF0000050012AC:1F40") == ("172.18.0.5", 8000)


def test_established_connections_keeps_established_rows_only(tmp_path):
    table = tmp_path / "tcp"
    table.write_text(
        HEADER
        + row(0, "0100007F:D431", "0100007F:8000")
        + row(1, "0100007F:8000", "00000000:0000", "0A")  # listening
        + row(2, "010012AC:C350", "050012AC:1F40")
        + row(3, "0100007F:D433", "0100007F:8000", "06")  # time wait
    )
    assert established_connections([str(table), str(tmp_path / "missing")]) == {
        (("127.0.0.1", 0xD431), ("127.0.0.1", 0x8000)),
        (("172.18.0.1", 0xC350), ("172.18.0.5", 8000)),
    }


def test_target_of_a_container_lists_its_published_port_and_its_own_addresses():
    info = {
        "NetworkSettings": {
            "Ports": {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32768"}], "9000/udp": None},
            "Networks": {"demo_default": {"IPAddress": "172.18.0.5", "GlobalIPv6Address": ""}},
        },
        "Config": {"ExposedPorts": {"8000/tcp": {}}},
    }
    target = target_of("demo-backend-1", 32768, info)
    assert target.published == (("127.0.0.1", 32768), ("::1", 32768))
    assert target.direct == (("172.18.0.5", 8000),)
    assert target_of("gone", None, None) == Target("gone")


def test_a_request_through_docker_proxy_counts_once():
    target = Target("b1", published=(("127.0.0.1", 32768),), direct=(("172.18.0.5", 8000),))
    established = {
        (("127.0.0.1", 40000), ("127.0.0.1", 32768)),  # Nginx -> docker-proxy
        (("127.0.0.1", 32768), ("127.0.0.1", 40000)),  # docker-proxy's accepted end: remote is not the target
        (("172.18.0.1", 50000), ("172.18.0.5", 8000)),  # docker-proxy -> the container
        (("172.18.0.1", 50001), ("172.18.0.9", 8000)),  # another container
    }
    published, direct = target.connections(established)
    assert len(published) == 1 and len(direct) == 1


class Timeline:
    """Connections that end at given times after the drain starts."""

    def __init__(self, ends: dict[tuple, float]):
        self.started = time.monotonic()
        self.ends = ends

    def __call__(self) -> set:
        now = time.monotonic() - self.started
        return {c for c, end in self.ends.items() if now < end}


TARGET = Target("old-1", direct=(("172.18.0.5", 8000),))
STREAM_A = (("172.18.0.1", 50000), ("172.18.0.5", 8000))
STREAM_B = (("172.18.0.1", 50001), ("172.18.0.5", 8000))


def test_drain_ends_when_the_last_stream_ends_not_at_the_timeout():
    timeline = Timeline({STREAM_A: 0.3, STREAM_B: 0.8})
    began = time.monotonic()
    report = drain([TARGET], set(), 30.0, workers=set, connections=timeline, interval_s=0.05)
    took = time.monotonic() - began
    assert 0.8 <= took < 3.0, took
    assert not report.timed_out and report.cut == 0
    assert report.waited_for == 2 and report.per_container == {"old-1": 2}
    assert "waited for 2 connection(s)" in report.summary()


def test_drain_with_nothing_in_flight_returns_at_once():
    began = time.monotonic()
    report = drain([TARGET], {101, 102}, 30.0, workers=lambda: {200, 201}, connections=set, interval_s=0.05)
    assert time.monotonic() - began < 1.0
    assert report.waited_for == 0 and not report.timed_out


def test_drain_waits_for_the_old_workers_of_the_reload():
    started = time.monotonic()

    def workers() -> set[int]:
        return {101, 200} if time.monotonic() - started < 0.5 else {200}

    report = drain([TARGET], {101, 102}, 30.0, workers=workers, connections=set, interval_s=0.05)
    assert 0.5 <= report.waited_s < 3.0 and not report.timed_out


def test_drain_waits_for_the_resolver_validity_after_the_switch():
    settle_until = time.monotonic() + 0.6
    report = drain([TARGET], set(), 30.0, settle_until=settle_until, workers=set, connections=set, interval_s=0.05)
    assert report.waited_s >= 0.55 and not report.timed_out


def test_a_stream_longer_than_drain_timeout_is_counted_as_cut():
    timeline = Timeline({STREAM_A: 0.2, STREAM_B: 60.0})
    report = drain([TARGET], {101}, 0.6, workers=lambda: {101}, connections=timeline, interval_s=0.05)
    assert report.timed_out and report.cut == 1 and report.waited_for == 2 and report.old_workers_left == 1
    assert "1 of 2 connection(s) cut" in report.summary()


# -- whose Nginx workers: a real Nginx master, and a decoy titled like a worker of another Nginx -------------


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


@pytest.fixture
def real_nginx(tmp_path):
    if NGINX is None:
        pytest.skip("no nginx binary on this machine")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    temp = ["%s_temp_path %s;" % (k, tmp_path) for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")]
    conf.write_text(
        "worker_processes 2;\npid %s/nginx.pid;\nerror_log %s/error.log;\nevents { worker_connections 64; }\n"
        "http { access_log off; %s server { listen 127.0.0.1:%d; location / { return 200 ok; } } }\n"
        % (tmp_path, tmp_path, " ".join(temp), port)
    )
    argv = [NGINX, "-p", str(tmp_path), "-c", str(conf)]
    done = subprocess.run([*argv, "-g", "daemon on;"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip("cannot start nginx here: %s" % done.stderr.strip())
    pid_file = str(tmp_path / "nginx.pid")
    wait_for(lambda: len(nginx_workers(pid_file)) == 2)
    yield argv, pid_file, port
    subprocess.run([*argv, "-s", "stop"], capture_output=True, check=False)


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met within %g s" % timeout
        time.sleep(0.05)


@pytest.fixture
def decoy_worker():
    """A process titled "nginx: worker process" whose parent is not our master (another Nginx's worker)."""
    proc = subprocess.Popen(["bash", "-c", 'exec -a "nginx: worker process" sleep 60'])
    wait_for(lambda: Path("/proc/%d/cmdline" % proc.pid).read_bytes().startswith(b"nginx: worker"))
    yield proc.pid
    proc.kill()
    proc.wait()


def test_only_the_workers_of_this_hosts_master_count(real_nginx, decoy_worker):
    _argv, pid_file, _port = real_nginx
    master = int(Path(pid_file).read_text())
    workers = nginx_workers(pid_file)
    assert nginx_master(pid_file) == master
    assert len(workers) == 2 and decoy_worker not in workers
    for pid in workers:
        assert Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()[1] == str(master)


def test_no_master_means_no_workers_to_wait_for(tmp_path, decoy_worker):
    # No pid file and no master in our pid namespace: a worker-titled process elsewhere is not ours.
    assert decoy_worker not in nginx_workers(str(tmp_path / "missing.pid"))


def test_drain_of_a_real_reload_ends_when_the_old_worker_finished_its_request(real_nginx):
    argv, pid_file, port = real_nginx
    before = nginx_workers(pid_file)
    # A request held open on an old worker: the headers are not finished, so the worker keeps it.
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.2)
    subprocess.run([*argv, "-s", "reload"], check=True, capture_output=True)
    wait_for(lambda: len(nginx_workers(pid_file) - before) == 2)

    def finish() -> None:
        time.sleep(0.8)
        client.sendall(b"Connection: close\r\n\r\n")
        client.recv(4096)
        client.close()

    wait_for(lambda: lingering_workers(0.0, pid_file))  # the master signals its old workers a moment later
    assert lingering_workers(0.0, pid_file) <= before, "only a worker of before the reload is shutting down"
    assert not lingering_workers(time.time() + 60, pid_file), "a worker older than the containers never knew them"
    threading.Thread(target=finish, daemon=True).start()
    report = drain([], before, 20.0, interval_s=0.05, workers=lambda: lingering_workers(0.0, pid_file))
    assert not report.timed_out, report.summary()
    assert 0.7 <= report.waited_s < 10.0


def test_a_switch_without_a_reload_does_not_wait_for_the_current_workers(real_nginx):
    # The resolver switch reloads nothing: the workers recorded at the switch are the current ones, which never
    # exit; the drain must not wait for them (only connections and the resolver's validity count then).
    _argv, pid_file, _port = real_nginx
    current = nginx_workers(pid_file)
    assert current and not lingering_workers(0.0, pid_file)
    began = time.monotonic()
    report = drain([TARGET], current, 10.0, connections=set, workers=lambda: lingering_workers(0.0, pid_file))
    assert not report.timed_out and time.monotonic() - began < 2.0


# -- the rollout's use of it: the result says what was waited for and warns about a cut -------------------


class FakeDocker:
    def inspect(self, _cid: str) -> dict:
        return {"NetworkSettings": {"Networks": {"n": {"IPAddress": "172.18.0.5"}}, "Ports": {"8000/tcp": None}}}


class FakeTraffic:
    workers_before_switch: set[int] = set()


def test_rollout_reports_the_drain_and_warns_when_it_cut_streams(monkeypatch):
    rollout = Rollout.__new__(Rollout)
    rollout.s = Settings(project="demo", project_dir="/tmp/demo", drain_timeout_s=0.3)
    rollout.docker = FakeDocker()
    rollout.traffic = FakeTraffic()
    rollout.run = Run()
    rollout.run.mark("backend_switched")
    # The package re-exports the function drain() under the module's name: patch the module itself.
    module = importlib.import_module("ansible_collections.opsbook.stack.plugins.module_utils._upgrade.drain")
    monkeypatch.setattr(module, "established_connections", lambda tables=(): {STREAM_A})
    old = [Container("id1", "demo-backend-1", "img", "running", 1, 0.0, None)]
    report = rollout._drain("backend", old)
    assert report.cut == 1 and report.timed_out
    assert rollout.run.evidence["drain"]["backend"]["cut"] == 1
    assert "backend_drained" in rollout.run.timings
    assert any("drain_timeout (0.3 s) passed with 1 of 1 connection(s)" in w for w in rollout.run.warnings)
