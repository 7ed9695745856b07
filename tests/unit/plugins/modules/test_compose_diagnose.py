# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The compose_diagnose module as Ansible runs it, against a fake Engine client with canned containers."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils._compose import (
    LABEL_NUMBER,
    LABEL_ONEOFF,
    LABEL_PROJECT,
    LABEL_SERVICE,
)
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerError
from ansible_collections.opsbook.stack.plugins.modules import compose_diagnose
from ansible_collections.opsbook.stack.tests.unit.module_args import run_module


def container(cid, service, number, status="running", health="healthy", oneoff=False, restarts=0, exit_code=0):
    labels = {
        LABEL_PROJECT: "shop",
        LABEL_SERVICE: service,
        LABEL_NUMBER: str(number),
        LABEL_ONEOFF: "True" if oneoff else "False",
    }
    state = {
        "Status": status,
        "Running": status == "running",
        "Restarting": status == "restarting",
        "Paused": False,
        "ExitCode": exit_code,
    }
    if health is not None:
        state["Health"] = {"Status": health, "Log": [{"Output": "probe %d said %s\n" % (n, health)} for n in range(5)]}
    name = "shop-%s-%d" % (service, number) if not oneoff else "shop-%s-run-1" % service
    listing = {"Id": cid, "Names": ["/" + name], "Labels": labels, "State": status}
    inspect = {
        "Id": cid,
        "Name": "/" + name,
        "Config": {"Labels": labels, "Image": "shop/%s:1.0" % service},
        "State": state,
        "RestartCount": restarts,
    }
    return listing, inspect


class FakeClient:
    def __init__(self, *containers, error=None):
        self.listing = [c[0] for c in containers]
        self.inspects = {c[0]["Id"]: c[1] for c in containers}
        self.error = error
        self.hosts: list[str] = []
        self.queries: list[tuple] = []
        self.logs_asked: list[tuple] = []

    def __call__(self, docker_host):
        self.hosts.append(docker_host)
        return self

    def list_containers(self, labels=None, all=False, filters=None, timeout=None):  # pylint: disable=redefined-builtin
        if self.error:
            raise self.error
        self.queries.append((labels, all))
        return list(self.listing)

    def inspect_container(self, cid, timeout=None):
        return self.inspects[cid]

    def container_logs(self, cid, tail=100, timestamps=False, timeout=None):
        self.logs_asked.append((cid, tail))
        return "line 1\nline 2\n", "oops\n"


@pytest.fixture
def client(monkeypatch):
    fake = FakeClient(
        container("b1", "backend", 1),
        container("b2", "backend", 2, health="unhealthy", restarts=3),
        container("w1", "worker", 1, health=None),  # no healthcheck: healthy while it runs
        container("d1", "db", 1, health="starting"),
        container("c1", "cron", 1, status="exited", health=None, exit_code=2),
        container("r1", "backend", 1, status="exited", oneoff=True),  # `docker compose run`: not the service
    )
    monkeypatch.setattr(compose_diagnose, "DockerClient", fake)
    return fake


def test_report_names_every_container_that_is_not_healthy(client, capsys):
    result = run_module(compose_diagnose, {"project": "shop", "log_tail": 7}, capsys)
    assert result["changed"] is False
    assert client.queries == [({LABEL_PROJECT: "shop"}, True)]
    assert result["unhealthy"] == ["backend", "cron", "db"]
    assert result["summary"] == "1/4 services healthy; unhealthy: backend, cron, db"
    by_name = {c["name"]: c for c in result["containers"]}
    assert sorted(by_name) == ["shop-backend-1", "shop-backend-2", "shop-cron-1", "shop-db-1", "shop-worker-1"]
    assert [c["name"] for c in result["containers"]] == sorted(by_name, key=lambda n: (by_name[n]["service"], n))
    assert by_name["shop-worker-1"]["ok"] is True and by_name["shop-worker-1"]["health"] == "none"
    assert by_name["shop-backend-1"]["ok"] is True and by_name["shop-backend-1"]["logs"] == ""
    bad = by_name["shop-backend-2"]
    assert bad["ok"] is False and bad["restart_count"] == 3 and bad["image"] == "shop/backend:1.0"
    assert bad["health_log"] == ["probe 2 said unhealthy", "probe 3 said unhealthy", "probe 4 said unhealthy"]
    assert bad["logs"] == "line 1\nline 2\noops"
    assert sorted(cid for cid, _tail in client.logs_asked) == ["b2", "c1", "d1"]
    assert {tail for _cid, tail in client.logs_asked} == {7}
    report = result["report"]
    assert report.splitlines()[0] == result["summary"]
    assert (
        "- service cron, container shop-cron-1 (shop/cron:1.0): exited, health none, exit code 2, 0 restarts" in report
    )
    assert "    health check: probe 4 said unhealthy" in report
    assert "      oops" in report
    assert "shop-backend-run-1" not in report


def test_docker_host_from_the_environment(client, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.1.1.1:2375")
    run_module(compose_diagnose, {"project": "shop"}, capsys)
    run_module(compose_diagnose, {"project": "shop", "docker_host": "unix:///run/x.sock"}, capsys)
    assert client.hosts == ["tcp://10.1.1.1:2375", "unix:///run/x.sock"]


def test_a_project_without_containers(monkeypatch, capsys):
    monkeypatch.setattr(compose_diagnose, "DockerClient", FakeClient())
    result = run_module(compose_diagnose, {"project": "empty"}, capsys)
    assert result["summary"] == result["report"] == "project empty has no containers"
    assert result["containers"] == [] and result["unhealthy"] == []


def test_docker_errors_fail_with_the_project(monkeypatch, capsys):
    monkeypatch.setattr(compose_diagnose, "DockerClient", FakeClient(error=DockerError("connection refused")))
    result = run_module(compose_diagnose, {"project": "shop"}, capsys)
    assert result["failed"] is True
    assert result["msg"] == "cannot read project shop from Docker: connection refused"


def test_check_mode_reads_the_same(client, capsys):
    result = run_module(compose_diagnose, {"project": "shop", "_ansible_check_mode": True}, capsys)
    assert result["changed"] is False and result["unhealthy"] == ["backend", "cron", "db"]
