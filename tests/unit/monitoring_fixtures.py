# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Real Prometheus and Alertmanager containers (the sandbox images) on 127.0.0.1 ephemeral ports.

Import the fixtures into a test module:
    from ansible_collections.opsbook.stack.tests.unit.monitoring_fixtures import monitoring  # noqa: F401

The Prometheus configuration scrapes Prometheus itself and a target that never answers (so `up == 0` has a
series), evaluates every second, and has one alert that always fires, one that stays pending for an hour, and
one that never fires; all carry a `runbook_id` label like the monitoring role's rules.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import os
import secrets
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient, DockerError

SOCKET = "/var/run/docker.sock"
PROMETHEUS_IMAGE = "127.0.0.1:5000/prometheus:2.42"
ALERTMANAGER_IMAGE = "127.0.0.1:5000/alertmanager:0.25"
PREFIX = "opsbook-test-mon-"

PROMETHEUS_CONFIG = """
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [/etc/prometheus/rules.yml]
scrape_configs:
  - job_name: prometheus
    static_configs: [{targets: ["127.0.0.1:9090"]}]
  - job_name: nothing-listens
    static_configs: [{targets: ["127.0.0.1:1"]}]
"""

PROMETHEUS_RULES = """
groups:
  - name: test
    rules:
      - alert: AlwaysFiring
        expr: vector(1)
        labels: {severity: warning, runbook_id: monitoring-broken}
        annotations: {summary: fires from the first evaluation on}
      - alert: PendingForAnHour
        expr: vector(1)
        for: 1h
        labels: {severity: critical, runbook_id: service-down}
      - alert: NeverFires
        expr: vector(1) == 2
        labels: {severity: critical, runbook_id: service-down}
"""


@dataclass
class Monitoring:
    prometheus_url: str
    alertmanager_url: str
    prometheus_container: str
    alertmanager_container: str


def _unavailable() -> str:
    if not os.path.exists(SOCKET):
        return "no Docker Engine socket at %s" % SOCKET
    client = DockerClient()
    try:
        for image in (PROMETHEUS_IMAGE, ALERTMANAGER_IMAGE):
            client.request_json("GET", "/images/%s/json" % image)
    except DockerError as exc:
        return "sandbox image missing or engine unusable (run ./dev sandbox): %s" % exc
    return ""


def _published_port(client: DockerClient, name: str, port: str) -> int:
    info = client.inspect_container(name)
    return int(info["NetworkSettings"]["Ports"][port][0]["HostPort"])


def _wait_http(url: str, deadline_s: float, predicate=None) -> None:
    end = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body = resp.read()
                if predicate is None or predicate(body):
                    return
                last = body[:200].decode("utf-8", "replace")
        except OSError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise TimeoutError("%s not ready in %s s: %s" % (url, deadline_s, last))


def _firing(body: bytes) -> bool:
    alerts = json.loads(body)["data"]["alerts"]
    return any(a["labels"]["alertname"] == "AlwaysFiring" and a["state"] == "firing" for a in alerts)


def _has_result(body: bytes) -> bool:
    return bool(json.loads(body)["data"]["result"])


@pytest.fixture(scope="session")
def monitoring(tmp_path_factory):
    """Prometheus (with alerts already firing) and Alertmanager, removed at the end of the session."""
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    client = DockerClient()
    run = secrets.token_hex(3)
    conf: Path = tmp_path_factory.mktemp("prometheus-conf")
    os.chmod(conf, 0o755)
    (conf / "prometheus.yml").write_text(PROMETHEUS_CONFIG)
    (conf / "rules.yml").write_text(PROMETHEUS_RULES)
    for item in conf.iterdir():
        os.chmod(item, 0o644)
    names = {"prometheus": PREFIX + "prometheus-" + run, "alertmanager": PREFIX + "alertmanager-" + run}
    loopback = {"HostIp": "127.0.0.1", "HostPort": ""}
    try:
        client.request_json(
            "POST",
            "/containers/create",
            query={"name": names["prometheus"]},
            body={
                "Image": PROMETHEUS_IMAGE,
                "Cmd": [
                    "--config.file=/etc/prometheus/prometheus.yml",
                    "--storage.tsdb.path=/prometheus",
                    "--web.listen-address=:9090",
                    "--web.enable-lifecycle",
                ],
                "ExposedPorts": {"9090/tcp": {}},
                "HostConfig": {
                    "PortBindings": {"9090/tcp": [loopback]},
                    "Binds": [
                        "%s/prometheus.yml:/etc/prometheus/prometheus.yml:ro" % conf,
                        "%s/rules.yml:/etc/prometheus/rules.yml:ro" % conf,
                    ],
                },
                "Labels": {"io.opsbook.test": "runbooks"},
            },
        )
        client.request_json(
            "POST",
            "/containers/create",
            query={"name": names["alertmanager"]},
            body={
                "Image": ALERTMANAGER_IMAGE,
                "ExposedPorts": {"9093/tcp": {}},
                "HostConfig": {"PortBindings": {"9093/tcp": [loopback]}},
                "Labels": {"io.opsbook.test": "runbooks"},
            },
        )
        for name in names.values():
            client.request("POST", "/containers/%s/start" % name)
        prom = "http://127.0.0.1:%d" % _published_port(client, names["prometheus"], "9090/tcp")
        am = "http://127.0.0.1:%d" % _published_port(client, names["alertmanager"], "9093/tcp")
        _wait_http(am + "/-/ready", 60)
        _wait_http(prom + "/-/ready", 60)
        _wait_http(prom + "/api/v1/alerts", 60, _firing)
        _wait_http(prom + "/api/v1/query?query=count(up)%3D%3D2", 60, _has_result)
        yield Monitoring(
            prometheus_url=prom,
            alertmanager_url=am,
            prometheus_container=names["prometheus"],
            alertmanager_container=names["alertmanager"],
        )
    finally:
        for name in names.values():
            try:
                client.remove_container(name, force=True, volumes=True)
            except DockerError:
                pass
