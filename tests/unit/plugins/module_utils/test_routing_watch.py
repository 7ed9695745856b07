# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The routing watcher (docs/routing.md "The watcher"): Docker's events rewrite a service's hosts file by the one
upstream function; a held project lock defers that until it is free; /proc/locks tells without taking the lock.
The molecule nginx scenario runs it as its systemd unit against a real engine (restart under load, crash loop)."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils import _routing_watch as rw
from ansible_collections.opsbook.stack.plugins.module_utils._project_lock import lock_path, project_lock
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import (
    LABEL_PROJECT,
    LABEL_SERVICE,
    hosts_addresses,
)
from ansible_collections.opsbook.stack.tests.unit.plugins.module_utils.test_upstream import (
    FakeEngine,
    container,
    published,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def event(action: str, project: str = "demo", service: str = "backend", kind: str = "container") -> dict:
    return {"Type": kind, "Action": action, "Actor": {"Attributes": {LABEL_PROJECT: project, LABEL_SERVICE: service}}}


def make_watcher(tmp_path, engine, clock=None, logs=None):
    config = rw.WatchConfig(
        routes=[rw.Route("demo", "backend", 8000)],
        upstream_dir=str(tmp_path / "upstreams.d"),
        lock_root=str(tmp_path / "lib"),
    )
    return rw.Watcher(config, client=engine, clock=clock or Clock(), log=(logs if logs is not None else []).append)


def hosts(tmp_path) -> str:
    return (tmp_path / "upstreams.d" / "hosts.d" / "demo_backend").read_text()


def test_an_event_of_a_routed_service_rewrites_its_hosts_file_after_the_debounce(tmp_path):
    engine = FakeEngine(container("c1", "demo-backend-1", 1, ports=published(49153)))
    clock = Clock()
    watcher = make_watcher(tmp_path, engine, clock)
    watcher.on_event(event("start"))
    watcher.on_event(event("health_status: healthy"))
    watcher.tick()
    assert not (tmp_path / "upstreams.d").exists()  # die and destroy of one moment are handled together
    clock.now += rw.DEBOUNCE_S
    watcher.tick()
    assert "172.18.0.2 demo_backend.opsbook.internal  # demo-backend-1" in hosts(tmp_path)
    assert watcher.pending == {}


def test_a_container_restarted_elsewhere_is_followed_and_a_dead_one_dropped(tmp_path):
    """What docker-rollout or `docker compose up -d` or a restart policy do behind the playbooks' back."""
    engine = FakeEngine(
        container("c1", "demo-backend-1", 1, ports=published(49153)),
        container("c2", "demo-backend-2", 2, ports=published(49160)),
    )
    clock = Clock()
    watcher = make_watcher(tmp_path, engine, clock)
    watcher.resync()
    watcher.tick()
    assert hosts_addresses(hosts(tmp_path)) == ["172.18.0.2:8000", "172.18.0.3:8000"]
    # demo-backend-2 dies; demo-backend-1 comes back with another address (restart policy).
    engine.inspects["c2"]["State"].update(Status="exited", Running=False)
    engine.inspects["c1"]["NetworkSettings"]["Networks"]["demo_default"]["IPAddress"] = "172.18.0.9"
    watcher.on_event(event("die"))
    clock.now += 1
    watcher.tick()
    assert hosts_addresses(hosts(tmp_path)) == ["172.18.0.9:8000"]


def test_a_container_being_stopped_is_dropped_while_it_still_runs_healthy(tmp_path):
    """`docker stop` signals the container, which then runs on, healthy, through its shutdown grace, and accepts
    no new connection. An upgrade killed in its drain frees the lock right then: the watcher must not route to
    the container being stopped (the fault matrix's "upgrade / SIGKILL module at draining" saw a 502 from it).
    A HUP (a reload) changes nothing; the container's next start routes it again."""
    engine = FakeEngine(
        container("c1", "demo-backend-1", 1, ports=published(49153)),
        container("c2", "demo-backend-2", 2, ports=published(49160)),
    )
    clock, logs = Clock(), []
    watcher = make_watcher(tmp_path, engine, clock, logs)
    watcher.resync()
    watcher.tick()
    assert hosts_addresses(hosts(tmp_path)) == ["172.18.0.2:8000", "172.18.0.3:8000"]

    def signalled(action: str, cid: str, signal: str = "") -> dict:
        sent = event(action)
        sent["Actor"]["ID"] = cid
        if signal:
            sent["Actor"]["Attributes"]["signal"] = signal
        return sent

    watcher.on_event(signalled("kill", "c2", "1"))  # SIGHUP: a reload, not a stop
    clock.now += 1
    watcher.tick()
    assert hosts_addresses(hosts(tmp_path)) == ["172.18.0.2:8000", "172.18.0.3:8000"]
    watcher.on_event(signalled("kill", "c2", "15"))  # still running and healthy in the engine's answers
    clock.now += 1
    watcher.tick()
    assert hosts_addresses(hosts(tmp_path)) == ["172.18.0.2:8000"]
    watcher.on_event(signalled("start", "c2"))
    clock.now += 1
    watcher.tick()
    assert hosts_addresses(hosts(tmp_path)) == ["172.18.0.2:8000", "172.18.0.3:8000"]
    # Every replica being stopped (`docker compose stop`, the service-down runbook's fault): the name is emptied
    # at the signal, while they still run, so Nginx answers 502 at once instead of waiting out its connect
    # timeout on their addresses once they exit.
    watcher.on_event(signalled("kill", "c1", "15"))
    watcher.on_event(signalled("kill", "c2", "3"))
    clock.now += 1
    watcher.tick()
    assert hosts_addresses(hosts(tmp_path)) == []
    assert any("emptied" in line and "being stopped (Docker sent it signal 15)" in line for line in logs), logs
    watcher.on_event(signalled("start", "c1"))
    clock.now += 1
    watcher.tick()
    assert hosts_addresses(hosts(tmp_path)) == ["172.18.0.2:8000"]


def test_running_but_unhealthy_containers_keep_the_last_addresses(tmp_path):
    """A failing health check of every replica is not proof they cannot answer: the addresses stay."""
    engine = FakeEngine(container("c1", "demo-backend-1", 1, ports=published(49153)))
    clock, logs = Clock(), []
    watcher = make_watcher(tmp_path, engine, clock, logs)
    watcher.resync()
    watcher.tick()
    before = hosts(tmp_path)
    engine.inspects["c1"]["State"]["Health"]["Status"] = "unhealthy"
    watcher.on_event(event("health_status: unhealthy"))
    clock.now += 1
    watcher.tick()
    assert hosts(tmp_path) == before
    assert any("kept as it is" in line for line in logs)


@pytest.mark.parametrize("status", ["exited", "restarting"])
def test_no_running_container_empties_the_name_so_nginx_answers_502_at_once(tmp_path, status):
    """Stopped, or a crash loop of every replica: the addresses on file are dead, and Nginx would wait out
    its connect timeout on each of them; a name without addresses gives the client a 502 at once."""
    engine = FakeEngine(container("c1", "demo-backend-1", 1, ports=published(49153)))
    clock, logs = Clock(), []
    watcher = make_watcher(tmp_path, engine, clock, logs)
    watcher.resync()
    watcher.tick()
    assert hosts_addresses(hosts(tmp_path)) == ["172.18.0.2:8000"]
    engine.inspects["c1"]["State"].update(Status=status, Running=False)
    watcher.on_event(event("die"))
    clock.now += 1
    watcher.tick()
    assert hosts_addresses(hosts(tmp_path)) == []
    assert "demo_backend.opsbook.internal" not in hosts(tmp_path)
    assert any("emptied" in line and "no container of the service runs" in line for line in logs)
    # Back up: the address comes back on the next event.
    engine.inspects["c1"]["State"].update(Status="running", Running=True)
    watcher.on_event(event("start"))
    clock.now += 1
    watcher.tick()
    assert hosts_addresses(hosts(tmp_path)) == ["172.18.0.2:8000"]


def test_events_of_other_services_and_actions_are_ignored(tmp_path):
    watcher = make_watcher(tmp_path, FakeEngine())
    for ignored in (
        event("start", service="worker"),
        event("start", project="other"),
        event("exec_start: sh"),
        event("create", kind="network"),
    ):
        watcher.on_event(ignored)
    assert watcher.pending == {}


def test_a_held_project_lock_defers_until_it_is_free(tmp_path):
    engine = FakeEngine(container("c1", "demo-backend-1", 1, ports=published(49153)))
    clock, logs = Clock(), []
    watcher = make_watcher(tmp_path, engine, clock, logs)
    with project_lock("demo", "upgrade", root=str(tmp_path / "lib")):
        watcher.on_event(event("start"))
        clock.now += 1
        watcher.tick()
        watcher.tick()
        assert not (tmp_path / "upstreams.d").exists()
        assert len([line for line in logs if "deferred" in line]) == 1
    watcher.tick()  # the lock is free: reconciled at the next tick
    assert "172.18.0.2 demo_backend.opsbook.internal" in hosts(tmp_path)


def test_lock_is_held_reads_another_process_s_flock_without_taking_it(tmp_path):
    path = lock_path("demo", str(tmp_path))
    assert not rw.lock_is_held(path)  # no file yet
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(30)\n",
            path,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        assert holder.stdout.readline().strip() == "held"
        assert rw.lock_is_held(path)
        assert rw._try_shared(path)  # the fallback agrees
        # Reading did not take it: an upgrade starting now still gets the lock once the holder is gone.
    finally:
        holder.kill()
        holder.wait()
    assert not rw.lock_is_held(path)
    with project_lock("demo", "upgrade", root=str(tmp_path)):
        assert rw.lock_is_held(path)


def test_load_config_reads_what_the_role_writes(tmp_path):
    path = tmp_path / "routing-watch.json"
    path.write_text(
        json.dumps(
            {
                "upstream_dir": "/etc/nginx/upstreams.d",
                "resync_s": 30,
                "routes": [{"project": "demo", "service": "backend", "port": 8000}],
            }
        )
    )
    config = rw.load_config(str(path))
    assert config.routes == [rw.Route("demo", "backend", 8000)] and config.resync_s == 30.0
    path.write_text(json.dumps({"routes": [{"project": "demo", "service": "bad name"}]}))
    with pytest.raises(rw.UpstreamError, match="not a valid Compose service name"):
        rw.load_config(str(path))


class StreamingEngine(FakeEngine):
    """FakeEngine with an event stream: the lines given, then a quiet stream until stopped."""

    api_version = "1.41"

    def __init__(self, lines, *containers):
        super().__init__(*containers)
        self.lines = list(lines)
        self.opened = threading.Event()

    def open_stream(self, method, path, query=None, timeout=None):
        assert (method, path) == ("GET", "/events")
        assert json.loads(query["filters"]) == {"type": ["container"]}
        engine = self

        class Response:
            def read1(self, _size):
                engine.opened.set()
                if engine.lines:
                    return engine.lines.pop(0)
                time.sleep(0.05)
                return b""

        class Stream:
            def __enter__(self):
                return Response()

            def __exit__(self, *exc):
                return False

        return Stream()


def test_run_follows_the_event_stream_and_resyncs_on_connect(tmp_path):
    engine = StreamingEngine(
        [json.dumps(event("start")).encode()[:20], json.dumps(event("start")).encode()[20:] + b"\n"],
        container("c1", "demo-backend-1", 1, ports=published(49153)),
    )
    watcher = make_watcher(tmp_path, engine, clock=time.monotonic)
    stop = threading.Event()
    runner = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 5
        while not (tmp_path / "upstreams.d" / "hosts.d" / "demo_backend").exists():
            assert time.monotonic() < deadline, "no hosts file within 5 s"
            time.sleep(0.05)
    finally:
        stop.set()
        runner.join(5)
    assert "172.18.0.2" in hosts(tmp_path)
