# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The nginx_upstream module as Ansible runs it: main() with module args, JSON result on stdout. The fake nginx
and the fake Engine are those of the _upstream tests."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils import _upstream
from ansible_collections.opsbook.stack.plugins.modules import nginx_upstream
from ansible_collections.opsbook.stack.tests.unit.module_args import run_module
from ansible_collections.opsbook.stack.tests.unit.plugins.module_utils.test_upstream import (
    FakeEngine,
    calls_of,
    container,
    make_fake_nginx,
    published,
)


@pytest.fixture
def fake_nginx(tmp_path, monkeypatch):
    """(conf_dir, NginxControl) with the fake nginx binary of the _upstream tests."""
    return make_fake_nginx(tmp_path, monkeypatch)


def run_upstream(args: dict, capsys) -> dict:
    return run_module(nginx_upstream, args, capsys)


def test_module_check_mode_then_real_then_quiet(fake_nginx, capsys):
    conf_dir, nginx = fake_nginx
    args = {
        "name": "app_hosts",
        "servers": [{"address": "10.0.0.12:8080"}, {"address": "10.0.0.11:8080"}],
        "directory": str(conf_dir),
        "nginx_binary": nginx.binary,
        "reload": False,
        "lock_path": str(conf_dir.parent / "lock"),
    }
    checked = run_upstream({**args, "_ansible_check_mode": True, "_ansible_diff": True}, capsys)
    assert checked["changed"] is True and "server 10.0.0.11:8080;" in checked["diff"]["after"]
    assert not (conf_dir / "app_hosts.conf").exists()
    real = run_upstream(args, capsys)
    assert real["changed"] is True and real["reloaded"] is False
    assert [s["address"] for s in real["servers"]] == ["10.0.0.11:8080", "10.0.0.12:8080"]
    assert run_upstream({**args, "_ansible_check_mode": True}, capsys)["changed"] is False
    assert run_upstream(args, capsys)["changed"] is False


def test_module_fails_with_nginx_error_and_keeps_the_old_file(fake_nginx, capsys):
    conf_dir, nginx = fake_nginx
    (conf_dir / "zz.conf").write_text("BROKEN;\n")  # something else breaks the configuration
    result = run_upstream(
        {
            "name": "app_hosts",
            "servers": [{"address": "10.0.0.11:8080"}],
            "directory": str(conf_dir),
            "nginx_binary": nginx.binary,
            "lock_path": str(conf_dir.parent / "lock"),
        },
        capsys,
    )
    assert result["failed"] is True
    assert result["nginx_error"].startswith('nginx: [emerg] unknown directive "BROKEN"')
    assert not (conf_dir / "app_hosts.conf").exists()


def test_module_state_absent_removes_the_file_once(fake_nginx, capsys):
    conf_dir, nginx = fake_nginx
    (conf_dir / "demo_legacy.conf").write_text("upstream demo_legacy { server 127.0.0.1:1; }\n")
    args = {
        "project": "demo",
        "service": "legacy",
        "state": "absent",
        "directory": str(conf_dir),
        "nginx_binary": nginx.binary,
        "reload": False,
        "lock_path": str(conf_dir.parent / "lock"),
    }
    (conf_dir / "hosts.d").mkdir()
    (conf_dir / "hosts.d" / "demo_legacy").write_text("# port 8000\n172.18.0.2 demo_legacy.opsbook.internal\n")
    removed = run_upstream(args, capsys)
    assert removed["changed"] is True and removed["upstream"] == "demo_legacy"
    assert not (conf_dir / "demo_legacy.conf").exists()  # the upstream block of an earlier release
    assert calls_of(conf_dir) == ["-t"]
    # Emptied, not removed: dnsmasq would keep serving the names of a removed file.
    assert _upstream.hosts_addresses((conf_dir / "hosts.d" / "demo_legacy").read_text()) == []
    assert run_upstream(args, capsys)["changed"] is False


def test_module_needs_a_service_or_a_name(capsys):
    result = run_upstream({"servers": [{"address": "10.0.0.11:8080"}]}, capsys)
    assert result["failed"] is True and "one of the following is required: name, service" in result["msg"]


def engine_for(monkeypatch, engine: FakeEngine) -> list[str]:
    """Hand `engine` to the module whatever Docker address it is given; returns the addresses asked for."""
    hosts: list[str] = []

    def client(docker_host):
        hosts.append(docker_host)
        return engine

    monkeypatch.setattr(_upstream, "DockerClient", client)
    return hosts


def test_module_discovers_from_the_docker_host_of_the_environment(fake_nginx, monkeypatch, capsys):
    conf_dir, nginx = fake_nginx
    engine = FakeEngine(
        container("c1", "demo-backend-1", 1, ports=published(49153)),
        container("c2", "demo-backend-2", 2, health="starting", ports=published(49160)),
    )
    engines = engine_for(monkeypatch, engine)
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.9.8.7:2375")
    args = {
        "project": "demo",
        "service": "backend",
        "port": 8000,
        "directory": str(conf_dir),
        "nginx_binary": nginx.binary,
        "reload": False,
        "lock_path": str(conf_dir.parent / "lock"),
    }
    result = run_upstream(args, capsys)
    assert engines == ["tcp://10.9.8.7:2375"]
    assert result["changed"] is True and result["upstream"] == "demo_backend"
    assert [s["address"] for s in result["servers"]] == ["172.18.0.2:8000"]
    assert result["skipped"] == [
        {
            "name": "demo-backend-2",
            "state": "running",
            "health": "starting",
            "reason": "health is starting",
            "leaving": False,
        }
    ]
    assert result["reloaded"] is False  # the resolver serves the hosts file: no reload (docs/routing.md)
    hosts = (conf_dir / "hosts.d" / "demo_backend").read_text()
    assert "172.18.0.2 demo_backend.opsbook.internal  # demo-backend-1" in hosts
    # An explicit docker_host wins over the environment.
    run_upstream({**args, "docker_host": "unix:///run/other.sock"}, capsys)
    assert engines[-1] == "unix:///run/other.sock"


def test_module_refuses_an_upstream_without_healthy_containers(fake_nginx, monkeypatch, capsys):
    conf_dir, nginx = fake_nginx
    (conf_dir / "demo_backend.conf").write_text("last good\n")
    engine_for(monkeypatch, FakeEngine(container("c1", "demo-backend-1", 1, status="exited", ports={})))
    result = run_upstream(
        {
            "project": "demo",
            "service": "backend",
            "port": 8000,
            "directory": str(conf_dir),
            "nginx_binary": nginx.binary,
            "lock_path": str(conf_dir.parent / "lock"),
        },
        capsys,
    )
    assert result["failed"] is True and "no healthy container for upstream demo_backend" in result["msg"]
    assert result["skipped"][0]["reason"] == "not running (exited)"
    assert (conf_dir / "demo_backend.conf").read_text() == "last good\n"
    assert calls_of(conf_dir) == []


def test_module_reports_a_busy_lock_with_its_holder(fake_nginx, capsys):
    conf_dir, nginx = fake_nginx
    lock = conf_dir.parent / "lock"
    from ansible_collections.opsbook.stack.plugins.module_utils._files import flock

    with flock(str(lock), "rolling_upgrade demo/backend"):
        result = run_upstream(
            {
                "name": "app_hosts",
                "servers": [{"address": "10.0.0.11:8080"}],
                "directory": str(conf_dir),
                "nginx_binary": nginx.binary,
                "lock_path": str(lock),
                "lock_timeout": 0.3,
            },
            capsys,
        )
    assert result["failed"] is True
    assert (
        "rolling_upgrade demo/backend" in result["msg"]
        and result["holder"]["operation"] == "rolling_upgrade demo/backend"
    )
    assert not (conf_dir / "app_hosts.conf").exists()
