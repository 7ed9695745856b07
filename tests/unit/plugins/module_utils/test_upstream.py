# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The shared upstream function: discovery from Docker's state, rendering, and activation that never leaves a
broken file behind. The `nginx -t` failure path uses a fake nginx script (the molecule scenario uses the real
one); the rest records the commands it would run."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import shutil
import stat
import subprocess
import textwrap
import time
import uuid

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils import _upstream as up
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient, DockerNotFound
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import (
    CommandResult,
    NginxConfigRejected,
    NginxControl,
    NoHealthyServers,
    Server,
    Upstream,
    UpstreamConfigError,
    activate,
    discover_servers,
    nginx_error_line,
    render_upstream,
    sync_upstream,
    upstream_file_for,
    upstream_name,
)

# --------------------------------------------------------------------------------------------------------
# Helpers: a recording nginx, a fake engine, a fake nginx binary for the failing test
# --------------------------------------------------------------------------------------------------------


class RecordingRunner:
    """Stands in for subprocess: answers `nginx -t`, `systemctl is-active` and reloads, and records them."""

    def __init__(self, test_rc: int = 0, running: bool = True, reload_rc: int = 0):
        self.calls: list[list[str]] = []
        self.test_rc = test_rc
        self.running = running
        self.reload_rc = reload_rc

    def __call__(self, argv):
        argv = list(argv)
        self.calls.append(argv)
        if argv[1:2] == ["-t"]:
            return CommandResult(
                tuple(argv), self.test_rc, "", "nginx: configuration file /etc/nginx/nginx.conf test is successful"
            )
        if argv[:2] == ["systemctl", "is-active"]:
            return CommandResult(tuple(argv), 0 if self.running else 3, "", "")
        return CommandResult(tuple(argv), self.reload_rc, "", "" if self.reload_rc == 0 else "reload failed")

    @property
    def verbs(self) -> list[str]:
        return [" ".join(c) for c in self.calls]


def systemd_nginx(runner, tmp_path) -> NginxControl:
    systemd = tmp_path / "systemd"
    systemd.mkdir(exist_ok=True)
    return NginxControl(runner=runner, systemd_dir=str(systemd))


def container(
    cid,
    name,
    number,
    status="running",
    health="healthy",
    ports=None,
    oneoff=False,
    project="demo",
    service="backend",
    ip="auto",
):
    labels = {
        up.LABEL_PROJECT: project,
        up.LABEL_SERVICE: service,
        up.LABEL_NUMBER: str(number),
        up.LABEL_ONEOFF: "True" if oneoff else "False",
    }
    state = {"Status": status, "Running": status == "running", "Restarting": False, "Paused": False}
    if health is not None:
        state["Health"] = {"Status": health, "Log": []}
    listing = {"Id": cid, "Names": ["/" + name], "Labels": labels, "State": status}
    inspect = {
        "Id": cid,
        "Name": "/" + name,
        "Config": {"Labels": labels},
        "State": state,
        "NetworkSettings": {
            "Ports": ports if ports is not None else {},
            # A running container has an address on the project's bridge network; an exited one none.
            "Networks": {"%s_default" % project: {"IPAddress": ("172.18.0.%d" % (number + 1)) if ip == "auto" else ip}}
            if status == "running"
            else {},
        },
    }
    return listing, inspect


def published(port, host_ip="127.0.0.1", container_port="8000/tcp"):
    return {container_port: [{"HostIp": host_ip, "HostPort": str(port)}]}


class FakeEngine:
    """list_containers/inspect_container as the Docker client answers them, from canned containers."""

    def __init__(self, *containers):
        self.listing = [c[0] for c in containers]
        self.inspects = {c[0]["Id"]: c[1] for c in containers}
        self.queries = []

    def list_containers(self, labels=None, all=False, filters=None, timeout=None):  # pylint: disable=redefined-builtin
        self.queries.append((labels, all))
        return [c for c in self.listing if all or c["State"] == "running"]

    def inspect_container(self, cid, timeout=None):
        if cid not in self.inspects:
            raise DockerNotFound(404, "no such container")
        return self.inspects[cid]


FAKE_NGINX = textwrap.dedent("""\
    #!/usr/bin/env python3
    # A stand-in for `nginx -t` in unit tests only: fails like nginx when a *.conf holds the word BROKEN.
    import glob, os, sys
    conf_dir = os.environ["FAKE_NGINX_DIR"]
    with open(os.path.join(conf_dir, "calls.log"), "a") as log:
        log.write(" ".join(sys.argv[1:]) + "\\n")
    if sys.argv[1:2] == ["-t"]:
        for path in sorted(glob.glob(os.path.join(conf_dir, "*.conf"))):
            for number, line in enumerate(open(path), 1):
                if "BROKEN" in line:
                    sys.stderr.write('nginx: [emerg] unknown directive "BROKEN" in %s:%d\\n' % (path, number))
                    sys.stderr.write("nginx: configuration file /etc/nginx/nginx.conf test failed\\n")
                    sys.exit(1)
        sys.stderr.write("nginx: the configuration file /etc/nginx/nginx.conf syntax is ok\\n")
        sys.stderr.write("nginx: configuration file /etc/nginx/nginx.conf test is successful\\n")
    sys.exit(0)
""")


@pytest.fixture
def fake_nginx(tmp_path, monkeypatch):
    """(conf_dir, NginxControl) with a fake nginx binary and a fake pid file pointing at this process."""
    return make_fake_nginx(tmp_path, monkeypatch)


def make_fake_nginx(tmp_path, monkeypatch):
    conf_dir = tmp_path / "upstreams.d"
    conf_dir.mkdir()
    binary = tmp_path / "nginx"
    binary.write_text(FAKE_NGINX)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("FAKE_NGINX_DIR", str(conf_dir))
    pid_file = tmp_path / "nginx.pid"
    pid_file.write_text("%d\n" % os.getpid())
    control = NginxControl(binary=str(binary), pid_file=str(pid_file), systemd_dir=str(tmp_path / "no-systemd"))
    return conf_dir, control


def calls_of(conf_dir) -> list[str]:
    log = conf_dir / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


# --------------------------------------------------------------------------------------------------------
# Names and rendering
# --------------------------------------------------------------------------------------------------------


def test_upstream_name_and_file():
    assert upstream_name("demo", "backend") == "demo_backend"
    assert upstream_file_for("demo_backend", "/etc/nginx/upstreams.d") == "/etc/nginx/upstreams.d/demo_backend.conf"
    with pytest.raises(UpstreamConfigError, match="not a valid Compose service name"):
        upstream_name("demo", "back end;")
    with pytest.raises(UpstreamConfigError):
        upstream_file_for("../etc/passwd")


def test_render_is_sorted_numerically_and_complete():
    servers = (
        Server("127.0.0.1:49160", comment="demo-backend-2"),
        Server("127.0.0.1:9000", weight=3, comment="demo-backend-1"),
        Server("10.0.0.12:8080", max_fails=2, fail_timeout="10s"),
    )
    text = render_upstream(Upstream("demo_backend", servers, keepalive=16, zone_size="128k", source="a test"))
    assert text == textwrap.dedent("""\
        # Managed by opsbook.stack (module_utils/_upstream.py): a test.
        # Rendered from Docker's state and checked with nginx -t; edits here are overwritten.
        upstream demo_backend {
            zone demo_backend 128k;
            server 10.0.0.12:8080 max_fails=2 fail_timeout=10s;
            server 127.0.0.1:9000 weight=3;  # demo-backend-1
            server 127.0.0.1:49160;  # demo-backend-2
            keepalive 16;
        }
        """)


def test_render_is_deterministic_whatever_the_input_order():
    a = Server("127.0.0.1:40001")
    b = Server("127.0.0.1:40002", weight=2)
    c = Server("[::1]:40003")
    first = render_upstream(Upstream("x", (a, b, c)))
    assert render_upstream(Upstream("x", (c, b, a))) == first
    assert render_upstream(Upstream("x", (b, c, a))) == first


def test_render_without_keepalive():
    text = render_upstream(Upstream("x", (Server("127.0.0.1:1"),), keepalive=0))
    assert "keepalive" not in text


@pytest.mark.parametrize(
    "server, message",
    [
        (Server("127.0.0.1"), "host:port"),
        (Server("127.0.0.1:0"), "host:port"),
        (Server("127.0.0.1:70000"), "host:port"),
        (Server("127.0.0.1:80; include /etc/shadow"), "host:port"),
        (Server("evil;host:80"), "neither"),
        (Server("[zz::1]:80"), "IPv6"),
        (Server("127.0.0.1:80", weight=0), "weight must be 1 or more"),
        (Server("127.0.0.1:80", fail_timeout="soon"), "fail_timeout"),
        (Server("unix:/run/app.sock;x"), "characters"),
    ],
)
def test_render_rejects_what_nginx_could_misread(server, message):
    with pytest.raises(UpstreamConfigError, match=message):
        render_upstream(Upstream("x", (server,)))


def test_render_rejects_duplicates_and_empty():
    with pytest.raises(UpstreamConfigError, match="twice"):
        render_upstream(Upstream("x", (Server("127.0.0.1:1"), Server("127.0.0.1:1", weight=2))))
    with pytest.raises(NoHealthyServers):
        render_upstream(Upstream("x", ()))


def test_nginx_error_line_picks_nginx_own_words():
    out = (
        "nginx: [warn] conflicting server name \"_\" on 0.0.0.0:80, ignored\n"
        "nginx: [emerg] unknown directive \"bogus\" in /etc/nginx/conf.d/site.conf:12\n"
        "nginx: configuration file /etc/nginx/nginx.conf test failed\n"
    )
    assert nginx_error_line(out) == 'nginx: [emerg] unknown directive "bogus" in /etc/nginx/conf.d/site.conf:12'
    assert nginx_error_line("something odd\n\n") == "something odd"


# --------------------------------------------------------------------------------------------------------
# Discovery from Docker's state
# --------------------------------------------------------------------------------------------------------


def test_discovery_keeps_running_healthy_containers_at_their_bridge_address():
    """Nginx reaches a container at <bridge ip>:<container port> (docs/routing.md): no published port involved,
    so a container that Docker restarts on another host port is still found where it is."""
    engine = FakeEngine(
        container("c2", "demo-backend-2", 2, ports=published(49160)),
        container("c1", "demo-backend-1", 1, ports=published(49153)),
        container("c3", "demo-backend-3", 3, health="starting", ports=published(49170)),
        container("c4", "demo-backend-4", 4, health="unhealthy", ports=published(49171)),
        container("c5", "demo-backend-5", 5, status="exited", ports={}),
        container("c6", "demo-backend-6", 6, health=None, ports={}),  # no healthcheck, nothing published: counts
        container("c7", "demo-backend-run-1", 7, oneoff=True, ports=published(49190)),
        container("c8", "demo-backend-8", 8, ip=""),
    )
    found = discover_servers(engine, "demo", "backend", 8000)
    assert engine.queries == [({up.LABEL_PROJECT: "demo", up.LABEL_SERVICE: "backend"}, True)]
    assert [(s.address, s.comment) for s in found.servers] == [
        ("172.18.0.2:8000", "demo-backend-1"),
        ("172.18.0.3:8000", "demo-backend-2"),
        ("172.18.0.7:8000", "demo-backend-6"),
    ]
    reasons = {s.name: s.reason for s in found.skipped}
    assert reasons == {
        "demo-backend-3": "health is starting",
        "demo-backend-4": "health is unhealthy",
        "demo-backend-5": "not running (exited)",
        "demo-backend-8": "has no IPv4 address on a bridge network",
    }


def test_discovery_container_port_from_the_label_or_the_only_published_port():
    ports = published(32768, host_ip="0.0.0.0", container_port="8080/tcp")
    engine = FakeEngine(container("c1", "demo-web-1", 1, ports=ports, service="web"))
    assert [s.address for s in discover_servers(engine, "demo", "web").servers] == ["172.18.0.2:8080"]
    listing, inspect = container("c2", "demo-web-2", 2, ports={}, service="web")
    inspect["Config"]["Labels"][up.LABEL_PORT] = "9000"
    assert [s.address for s in discover_servers(FakeEngine((listing, inspect)), "demo", "web").servers] == [
        "172.18.0.3:9000"
    ]


def test_container_ip_of_a_host_network_container_is_loopback():
    assert up.container_ip({"HostConfig": {"NetworkMode": "host"}, "NetworkSettings": {"Networks": {}}}) == "127.0.0.1"
    two = {"NetworkSettings": {"Networks": {"z_net": {"IPAddress": "10.0.9.2"}, "a_net": {"IPAddress": "10.0.1.2"}}}}
    assert up.container_ip(two) == "10.0.1.2"  # the first network by name: a stable choice


def test_discovery_needs_the_port_when_several_are_published():
    ports = {**published(1, container_port="8000/tcp"), **published(2, container_port="9000/tcp")}
    found = discover_servers(FakeEngine(container("c1", "demo-backend-1", 1, ports=ports)), "demo", "backend")
    assert found.servers == []
    assert "set the container port" in found.skipped[0].reason


def test_discovery_weights_by_container_name():
    engine = FakeEngine(
        container("c1", "demo-backend-1", 1, ports=published(40001)),
        container("c3", "demo-backend-3", 3, ports=published(40003)),
    )
    found = discover_servers(engine, "demo", "backend", 8000, weights={"demo-backend-3": 1, "demo-backend-1": 9})
    assert [(s.address, s.weight) for s in found.servers] == [("172.18.0.2:8000", 9), ("172.18.0.4:8000", 1)]


# --------------------------------------------------------------------------------------------------------
# Activation
# --------------------------------------------------------------------------------------------------------


def test_activate_writes_tests_and_reloads_then_is_quiet(tmp_path):
    runner = RecordingRunner()
    nginx = systemd_nginx(runner, tmp_path)
    path = str(tmp_path / "demo_backend.conf")
    first = activate(path, "upstream a { server 127.0.0.1:1; }\n", nginx=nginx, lock_path=str(tmp_path / "lock"))
    assert first.changed and first.reloaded and first.previous is None
    assert runner.verbs == ["nginx -t", "systemctl is-active --quiet nginx", "systemctl reload nginx"]
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    runner.calls.clear()
    again = activate(path, "upstream a { server 127.0.0.1:1; }\n", nginx=nginx, lock_path=str(tmp_path / "lock"))
    assert not again.changed and not again.reloaded
    assert runner.calls == []  # unchanged content: no test, no reload
    assert sorted(os.listdir(tmp_path)) == ["demo_backend.conf", "lock", "systemd"]  # no temporary files left


def test_activate_check_mode_writes_nothing(tmp_path):
    runner = RecordingRunner()
    path = tmp_path / "x.conf"
    result = activate(
        str(path),
        "upstream x { server 127.0.0.1:1; }\n",
        nginx=systemd_nginx(runner, tmp_path),
        check_mode=True,
        lock_path=None,
    )
    assert result.changed and not path.exists() and runner.calls == []


def test_activate_does_not_start_a_stopped_nginx(tmp_path):
    runner = RecordingRunner(running=False)
    result = activate(str(tmp_path / "x.conf"), "x\n", nginx=systemd_nginx(runner, tmp_path), lock_path=None)
    assert result.changed and not result.reloaded
    assert "not running" in result.note
    assert runner.verbs == ["nginx -t", "systemctl is-active --quiet nginx"]


def test_activate_without_systemd_signals_the_master(fake_nginx):
    conf_dir, nginx = fake_nginx
    result = activate(str(conf_dir / "a.conf"), "upstream a { server 127.0.0.1:1; }\n", nginx=nginx, lock_path=None)
    assert result.reloaded
    assert calls_of(conf_dir) == ["-t", "-s reload"]


def test_failed_test_puts_the_previous_file_back(fake_nginx):
    conf_dir, nginx = fake_nginx
    path = conf_dir / "demo_backend.conf"
    good = "upstream demo_backend {\n    server 127.0.0.1:49153;\n}\n"
    path.write_text(good)
    with pytest.raises(NginxConfigRejected) as caught:
        activate(str(path), "upstream demo_backend {\n    BROKEN;\n}\n", nginx=nginx, lock_path=None)
    assert path.read_text() == good  # byte for byte the last good file
    assert caught.value.nginx_error == 'nginx: [emerg] unknown directive "BROKEN" in %s:2' % path
    assert caught.value.nginx_error in str(caught.value)
    assert "put back" in str(caught.value)
    assert caught.value.evidence["test_after_restore"] == "ok"
    assert calls_of(conf_dir) == ["-t", "-t"]  # tested, restored, tested again; never reloaded
    assert sorted(p.name for p in conf_dir.iterdir()) == ["calls.log", "demo_backend.conf"]


def test_failed_test_of_a_new_file_removes_it(fake_nginx):
    conf_dir, nginx = fake_nginx
    path = conf_dir / "new.conf"
    with pytest.raises(NginxConfigRejected, match="previous state"):
        activate(str(path), "BROKEN\n", nginx=nginx, lock_path=None)
    assert not path.exists()


def test_failed_test_caused_elsewhere_still_restores_and_says_so(fake_nginx):
    """Another file is broken: our (valid) change is not applied either, and nginx's line names the culprit."""
    conf_dir, nginx = fake_nginx
    (conf_dir / "other.conf").write_text("BROKEN;\n")
    path = conf_dir / "mine.conf"
    path.write_text("old\n")
    with pytest.raises(NginxConfigRejected) as caught:
        activate(str(path), "new\n", nginx=nginx, lock_path=None)
    assert path.read_text() == "old\n"
    assert "other.conf:1" in caught.value.nginx_error
    assert caught.value.evidence["test_after_restore"] != "ok"


def test_reload_failure_is_reported(tmp_path):
    runner = RecordingRunner(reload_rc=1)
    with pytest.raises(up.NginxReloadFailed, match="passed nginx -t but `systemctl reload nginx` failed"):
        activate(str(tmp_path / "x.conf"), "x\n", nginx=systemd_nginx(runner, tmp_path), lock_path=None)


# --------------------------------------------------------------------------------------------------------
# sync_upstream: the call the role and the upgrade modules make
# --------------------------------------------------------------------------------------------------------


def test_sync_from_docker_writes_the_hosts_file_without_touching_nginx_then_is_quiet(tmp_path):
    """A service's routing is its hosts file: written atomically, read by the resolver; no nginx -t, no reload
    (a reload closes idle keep-alive client connections: docs/routing.md)."""
    engine = FakeEngine(
        container("c1", "demo-backend-1", 1, ports=published(49153)),
        container("c2", "demo-backend-2", 2, ports=published(49160)),
    )
    runner = RecordingRunner()
    kwargs = dict(
        port=8000,
        directory=str(tmp_path / "upstreams.d"),
        docker=engine,
        nginx=systemd_nginx(runner, tmp_path),
        lock_path=str(tmp_path / "lock"),
    )
    first = sync_upstream("demo", "backend", **kwargs)
    assert first.changed and not first.reloaded and first.name == "demo_backend"
    path = tmp_path / "upstreams.d" / "hosts.d" / "demo_backend"
    assert first.path == str(path)
    text = path.read_text()
    assert text.endswith(
        "# port 8000\n"
        "172.18.0.2 demo_backend.opsbook.internal  # demo-backend-1\n"
        "172.18.0.3 demo_backend.opsbook.internal  # demo-backend-2\n"
    )
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"  # dnsmasq reads it as nobody
    assert up.hosts_addresses(text) == ["172.18.0.2:8000", "172.18.0.3:8000"]
    second = sync_upstream("demo", "backend", **kwargs)
    assert not second.changed and not second.reloaded
    assert runner.calls == []
    # Only the file and its (dot) lock: dnsmasq reads every other file of the directory.
    assert sorted(os.listdir(path.parent)) == [".demo_backend.lock", "demo_backend"]


def test_sync_refuses_an_upstream_without_servers(tmp_path):
    directory = tmp_path / "upstreams.d"
    (directory / "hosts.d").mkdir(parents=True)
    (directory / "hosts.d" / "demo_backend").write_text("last good\n")
    engine = FakeEngine(container("c1", "demo-backend-1", 1, health="unhealthy", ports=published(49153)))
    with pytest.raises(NoHealthyServers) as caught:
        sync_upstream("demo", "backend", port=8000, directory=str(directory), docker=engine)
    assert "demo-backend-1: health is unhealthy" in str(caught.value)
    assert "left as it is" in str(caught.value)
    assert (directory / "hosts.d" / "demo_backend").read_text() == "last good\n"


def test_sync_with_explicit_weighted_servers_says_the_weights_are_not_kept(tmp_path):
    servers = [Server("172.18.0.9:8000", weight=1, comment="new"), Server("172.18.0.2:8000", weight=9, comment="old")]
    result = sync_upstream("demo", "backend", servers=servers, directory=str(tmp_path))
    assert [s.address for s in result.servers] == ["172.18.0.2:8000", "172.18.0.9:8000"]
    assert result.content.endswith(
        "172.18.0.2 demo_backend.opsbook.internal  # old\n172.18.0.9 demo_backend.opsbook.internal  # new\n"
    )
    assert "weights are not expressible" in result.note


def test_final_reread_after_a_switch_writes_nothing(tmp_path):
    """After a switch with explicit servers, the re-read from Docker finds the same servers: the same bytes."""
    servers = [Server("172.18.0.2:8000", comment="demo-backend-1")]
    kwargs = dict(directory=str(tmp_path / "upstreams.d"))
    first = sync_upstream("demo", "backend", servers=servers, **kwargs)
    assert first.changed
    engine = FakeEngine(container("c1", "demo-backend-1", 1, ports=published(49153)))
    again = sync_upstream("demo", "backend", port=8000, docker=engine, **kwargs)
    assert not again.changed and again.content == first.content
    engine = FakeEngine(container("c2", "demo-backend-2", 2, ports=published(49160)))
    moved = sync_upstream("demo", "backend", port=8000, docker=engine, **kwargs)
    assert moved.changed and "172.18.0.3 demo_backend.opsbook.internal" in moved.content


def test_render_hosts_refuses_what_the_resolver_cannot_say():
    with pytest.raises(UpstreamConfigError, match="different ports"):
        up.render_hosts("demo_backend", [Server("172.18.0.2:8000"), Server("172.18.0.3:9000")])
    with pytest.raises(UpstreamConfigError, match="IPv4 address"):
        up.render_hosts("demo_backend", [Server("127.0.0.1:49153".replace("127.0.0.1", "backend"))])
    with pytest.raises(NoHealthyServers):
        up.render_hosts("demo_backend", [])
    closed = up.render_hosts("demo_backend_gate", [], allow_empty=True)
    assert up.hosts_addresses(closed) == [] and "opsbook.internal" not in closed.split("# port")[1]


def test_explicit_servers_under_a_name_stay_an_upstream_block(tmp_path):
    """The app hosts behind an edge Nginx change only at a converge: an upstream block, nginx -t, a reload."""
    runner = RecordingRunner()
    done = sync_upstream(
        name="app_hosts",
        servers=[Server("10.0.0.6:80", weight=2), Server("10.0.0.5:80")],
        directory=str(tmp_path),
        nginx=systemd_nginx(runner, tmp_path),
        lock_path=None,
    )
    assert done.changed and done.reloaded and done.path == str(tmp_path / "app_hosts.conf")
    assert "    server 10.0.0.5:80;\n    server 10.0.0.6:80 weight=2;\n" in done.content
    assert runner.verbs[0] == "nginx -t"


# --------------------------------------------------------------------------------------------------------
# Against the real Docker Engine, when there is one
# --------------------------------------------------------------------------------------------------------

IMAGE = os.environ.get("OPSBOOK_TEST_BACKEND_IMAGE", "127.0.0.1:5000/demo-backend:1.0")


@pytest.mark.docker
def test_discovery_against_the_real_engine(tmp_path):
    if not os.path.exists("/var/run/docker.sock") or not shutil.which("docker"):
        pytest.skip("no Docker Engine here")
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False).returncode != 0:
        if subprocess.run(["docker", "pull", "-q", IMAGE], capture_output=True, check=False).returncode != 0:
            pytest.skip("image %s not available" % IMAGE)
    project = "opsbook-upstream-test-%s" % uuid.uuid4().hex[:8]
    names = []
    try:
        for number in (1, 2):
            name = "%s-backend-%d" % (project, number)
            subprocess.run(
                [
                    "docker",
                    "run",
                    "-d",
                    "--name",
                    name,
                    "-p",
                    "127.0.0.1::8000",
                    "--label",
                    "%s=%s" % (up.LABEL_PROJECT, project),
                    "--label",
                    "%s=backend" % up.LABEL_SERVICE,
                    "--label",
                    "%s=%d" % (up.LABEL_NUMBER, number),
                    "--health-interval",
                    "1s",
                    "--health-start-period",
                    "0s",
                    IMAGE,
                ],
                check=True,
                capture_output=True,
            )
            names.append(name)
        client = DockerClient()
        deadline = time.monotonic() + 30
        found = discover_servers(client, project, "backend", 8000)
        while len(found.servers) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            found = discover_servers(client, project, "backend", 8000)
        assert [s.comment for s in sorted(found.servers, key=lambda s: s.comment)] == names
        for server in found.servers:
            ip = subprocess.run(
                ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", server.comment],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            assert server.address == "%s:8000" % ip
    finally:
        if names:
            subprocess.run(["docker", "rm", "-f", *names], capture_output=True, check=False)
