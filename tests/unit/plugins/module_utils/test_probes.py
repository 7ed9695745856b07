# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Probe logic against real local servers (http.server, a TCP listener) and a fake Docker client."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import time
import uuid

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils import _probes as probes
from ansible_collections.opsbook.stack.plugins.module_utils._docker import (
    DockerConflict,
    DockerNotFound,
    DockerTimeout,
    ExecResult,
)
from ansible_collections.opsbook.stack.plugins.module_utils._probes import (
    ContainerProbe,
    ExecProbe,
    HttpProbe,
    ProbeConfigError,
    TcpProbe,
    check,
    parse_probes,
    run_probes,
)
from ansible_collections.opsbook.stack.tests.unit.http_fixtures import (  # noqa: F401 pylint: disable=unused-import
    tls,
    tls_server,
)


def one(raw: dict, **kwargs) -> probes.ProbeResult:
    report = check([raw], **kwargs)
    assert len(report.results) == 1
    return report.results[0]


# --------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------


def test_parse_applies_defaults_and_types():
    parsed = parse_probes(
        [
            {"type": "http", "url": "http://127.0.0.1/health", "status": 204},
            {"type": "tcp", "host": "127.0.0.1", "port": "6379"},
            {"type": "container", "container": "web"},
            {"type": "exec", "container": "db", "command": ["mysqladmin", "ping"]},
        ]
    )
    http, tcp, container, exe = parsed
    assert isinstance(http, HttpProbe) and http.status == (204,) and http.method == "GET"
    assert (http.timeout, http.retries, http.delay) == (5.0, 0, 1.0)
    assert http.validate_certs is True and http.follow_redirects is False
    assert isinstance(tcp, TcpProbe) and tcp.port == 6379
    assert isinstance(container, ContainerProbe) and container.max_restarts is None
    assert isinstance(exe, ExecProbe) and exe.command == ("mysqladmin", "ping") and exe.expect_rc == 0
    assert [p.name for p in parsed] == [
        "http://127.0.0.1/health",
        "tcp:127.0.0.1:6379",
        "container:web",
        "exec:db:mysqladmin ping",
    ]
    assert exe.target == "db: mysqladmin ping"


def test_parse_accepts_module_style_dicts_with_defaults_filled_in():
    # AnsibleModule fills every suboption, so a tcp probe arrives with method/status/... at their defaults.
    filled = {key: None for key in probes.ALL_FIELDS}
    filled.update(probes.FIELD_DEFAULTS)
    filled.update(type="tcp", host="localhost", port=22)
    (probe,) = parse_probes([filled])
    assert isinstance(probe, TcpProbe)


def test_derived_duplicate_names_are_made_unique():
    parsed = parse_probes([{"type": "tcp", "host": "h", "port": 1}, {"type": "tcp", "host": "h", "port": 1}])
    assert [p.name for p in parsed] == ["tcp:h:1", "tcp:h:1#1"]


@pytest.mark.parametrize(
    "raw_probes, message",
    [
        (
            [{"type": "tcp", "host": "h", "port": 1}, {"type": "tcp", "host": "h", "port": 2}, {"type": "http"}],
            "probes[2]: type 'http' needs 'url'",
        ),
        (
            [{"type": "ftp", "url": "ftp://x"}],
            "probes[0]: unknown type 'ftp' (expected one of: http, tcp, container, exec)",
        ),
        ([{"url": "http://x/"}], "probes[0]: 'type' is required"),
        ([{"type": "tcp", "host": "h"}], "probes[0]: type 'tcp' needs 'port'"),
        ([{"type": "exec", "container": "db"}], "probes[0]: type 'exec' needs 'command'"),
        ([{"type": "container"}], "probes[0]: type 'container' needs 'container'"),
        ([{"type": "tcp", "host": "h", "port": 70000}], "probes[0]: 'port' must be between 1 and 65535"),
        (
            [{"type": "tcp", "host": "h", "port": 1, "url": "http://x/"}],
            "probes[0]: field(s) 'url' do not apply to type 'tcp'",
        ),
        ([{"type": "http", "url": "http://x/", "hots": "y"}], "probes[0]: unknown field(s) 'hots'"),
        (
            [{"type": "http", "url": "http://x/", "body_pattern": "(unclosed"}],
            "probes[0]: 'body_pattern' is not a valid regular expression",
        ),
        ([{"type": "http", "url": "127.0.0.1/health"}], "probes[0]: 'url' must be an absolute http:// or https://"),
        ([{"type": "http", "url": "http://x:http/"}], "probes[0]: 'url' has an invalid port"),
        ([{"type": "http", "url": "http://x/", "status": [200, 700]}], "probes[0]: 'status' must be between 100"),
        ([{"type": "http", "url": "http://x/", "timeout": 0}], "probes[0]: 'timeout' must be > 0"),
        ([{"type": "http", "url": "http://x/", "retries": -1}], "probes[0]: 'retries' must be >= 0"),
        (
            [{"type": "exec", "container": "db", "command": "mysqladmin ping"}],
            "probes[0]: 'command' must be a list (argv)",
        ),
        (
            [{"type": "exec", "container": "db", "command": ["mysqladmin ping"]}],
            "probes[0]: 'command' is one argv element with spaces",
        ),
        (
            [
                {"type": "tcp", "host": "h", "port": 1, "name": "x"},
                {"type": "tcp", "host": "h", "port": 2, "name": "x"},
            ],
            "probes[1]: name 'x' is already used by probes[0]",
        ),
        (["not a dict"], "probes[0]: must be a dict"),
        ([], "probes is empty"),
    ],
)
def test_validation_errors_name_the_probe_and_field(raw_probes, message):
    with pytest.raises(ProbeConfigError) as excinfo:
        parse_probes(raw_probes)
    assert message in str(excinfo.value)


def test_max_workers_must_be_positive():
    with pytest.raises(ProbeConfigError, match="max_workers must be >= 1"):
        check([{"type": "tcp", "host": "h", "port": 1}], max_workers=0)


# --------------------------------------------------------------------------------------------------------
# http
# --------------------------------------------------------------------------------------------------------


def test_http_ok(http_server):
    result = one({"type": "http", "url": http_server.url("/ok"), "name": "api"})
    assert result.ok and result.status == 200 and result.attempts == 1
    assert result.error is None and result.detail.startswith("HTTP 200 in ")
    assert result.latency_ms is not None and result.latency_ms >= 0


def test_http_unexpected_status_is_reported_with_body(http_server):
    result = one({"type": "http", "url": http_server.url("/status/503")})
    assert not result.ok and result.status == 503
    assert result.error == "HTTP 503 (expected 200)"
    assert "status page" in result.evidence["body"]


def test_http_status_list(http_server):
    assert one({"type": "http", "url": http_server.url("/status/503"), "status": [200, 503]}).ok


def test_http_body_pattern(http_server):
    assert one({"type": "http", "url": http_server.url("/ok"), "body_pattern": r'"status":\s*"ok"'}).ok
    result = one({"type": "http", "url": http_server.url("/ok"), "body_pattern": "degraded"})
    assert not result.ok and "body does not match /degraded/" in result.error


def test_http_redirect_not_followed_by_default(http_server):
    result = one({"type": "http", "url": http_server.url("/redirect")})
    assert not result.ok and result.status == 302
    assert "redirects to /ok" in result.error and "follow_redirects" in result.error
    assert one({"type": "http", "url": http_server.url("/redirect"), "status": 302}).ok
    followed = one({"type": "http", "url": http_server.url("/redirect"), "follow_redirects": True})
    assert followed.ok and followed.status == 200


def test_http_host_header_is_sent(http_server):
    result = one(
        {
            "type": "http",
            "url": http_server.url("/echo-host"),
            "headers": {"Host": "app.example.com"},
            "body_pattern": "^host=app.example.com$",
        }
    )
    assert result.ok, result.error
    assert result.target.endswith("(Host: app.example.com)")


def test_http_latency_budget(http_server):
    slow = one({"type": "http", "url": http_server.url("/slow?s=0.3"), "latency_budget_ms": 100})
    assert not slow.ok and slow.status == 200
    assert "over the latency budget of 100 ms" in slow.error
    assert one({"type": "http", "url": http_server.url("/ok"), "latency_budget_ms": 2000}).ok


def test_http_timeout(http_server):
    started = time.monotonic()
    result = one({"type": "http", "url": http_server.url("/slow?s=3"), "timeout": 0.3})
    assert time.monotonic() - started < 2
    assert not result.ok and result.status is None
    assert result.error.startswith("timed out after 0.3 s")


def test_http_trickling_body_cannot_outlast_the_timeout(http_server):
    # Each read gets a byte within the socket timeout; only the attempt deadline stops this.
    started = time.monotonic()
    result = one({"type": "http", "url": http_server.url("/trickle"), "timeout": 0.7})
    assert time.monotonic() - started < 2
    assert not result.ok and "timed out" in result.error


def test_http_streaming_endpoint_stops_at_first_match(http_server):
    started = time.monotonic()
    result = one({"type": "http", "url": http_server.url("/sse"), "body_pattern": "data: hello", "timeout": 3})
    assert result.ok, result.error
    assert time.monotonic() - started < 2


def test_http_connection_refused(closed_port):
    result = one({"type": "http", "url": "http://127.0.0.1:%d/" % closed_port, "timeout": 1})
    assert not result.ok and "connection refused" in result.error


def test_http_name_resolution_failure():
    result = one({"type": "http", "url": "http://no-such-host.invalid/", "timeout": 2})
    assert not result.ok and "cannot resolve" in result.error


def test_http_retries_until_ready(http_server):
    key = uuid.uuid4().hex
    result = one({"type": "http", "url": http_server.url("/flaky?n=2&key=%s" % key), "retries": 3, "delay": 0.05})
    assert result.ok and result.attempts == 3


def test_http_retries_exhausted(http_server):
    key = uuid.uuid4().hex
    report = check(
        [
            {
                "type": "http",
                "name": "warming",
                "url": http_server.url("/flaky?n=5&key=%s" % key),
                "retries": 1,
                "delay": 0.05,
            }
        ]
    )
    (result,) = report.results
    assert not result.ok and result.attempts == 2 and result.status == 503
    assert "after 2 attempts" in report.failure_message()


# --------------------------------------------------------------------------------------------------------
# tcp
# --------------------------------------------------------------------------------------------------------


def test_tcp_open(tcp_listener):
    result = one({"type": "tcp", "host": "127.0.0.1", "port": tcp_listener})
    assert result.ok and result.status == "open" and result.target == "127.0.0.1:%d" % tcp_listener


def test_tcp_closed(closed_port):
    result = one({"type": "tcp", "host": "127.0.0.1", "port": closed_port, "name": "redis"})
    assert not result.ok and result.status == "closed"
    assert "connection refused by 127.0.0.1:%d" % closed_port in result.error


# --------------------------------------------------------------------------------------------------------
# Report and concurrency
# --------------------------------------------------------------------------------------------------------


def test_report_summary_and_failure_message(http_server, tcp_listener, closed_port):
    report = check(
        [
            {"type": "http", "name": "api", "url": http_server.url("/ok")},
            {"type": "tcp", "name": "redis", "host": "127.0.0.1", "port": tcp_listener},
            {"type": "tcp", "name": "db", "host": "127.0.0.1", "port": closed_port},
            {"type": "http", "name": "frontend", "url": http_server.url("/status/502")},
        ]
    )
    assert not report.healthy
    assert report.failed_probes == ["db", "frontend"]
    assert report.summary == "2/4 probes healthy; failing: db, frontend"
    message = report.failure_message()
    assert message.startswith("2 of 4 probes unhealthy: ")
    assert "[db] tcp 127.0.0.1:%d: connection refused" % closed_port in message
    assert "[frontend] http GET %s: HTTP 502 (expected 200)" % http_server.url("/status/502") in message
    as_dict = report.to_dict()
    assert [p["name"] for p in as_dict["probes"]] == ["api", "redis", "db", "frontend"]
    assert set(as_dict["probes"][0]) == {
        "name",
        "type",
        "target",
        "ok",
        "status",
        "health",
        "latency_ms",
        "attempts",
        "detail",
        "error",
        "evidence",
    }


def test_all_healthy_summary(http_server):
    report = check([{"type": "http", "url": http_server.url("/ok")}] * 3)
    assert report.healthy and report.summary == "3/3 probes healthy" and report.failed_probes == []


def test_probes_run_concurrently(http_server):
    count, each_s = 20, 0.5
    raw = [{"type": "http", "name": "slow-%d" % i, "url": http_server.url("/slow?s=%s" % each_s)} for i in range(count)]
    started = time.monotonic()
    report = check(raw)
    wall = time.monotonic() - started
    print("\nconcurrency: %d probes of %.1f s each -> %.3f s wall" % (count, each_s, wall))
    assert report.healthy, report.failure_message()
    assert wall < 1.5, "probes ran one after another? %d x %.1f s took %.2f s" % (count, each_s, wall)
    assert report.elapsed_ms < 1500


def test_fifty_probes_take_the_time_of_the_slowest(http_server, tcp_listener):
    # The design's benchmark: 50 probes, wall time near the slowest one (0.5 s here), not the sum (15 s).
    raw = [{"type": "http", "url": http_server.url("/slow?s=0.5"), "name": "http-%d" % i} for i in range(25)]
    raw += [{"type": "http", "url": http_server.url("/slow?s=0.2"), "name": "fast-%d" % i} for i in range(20)]
    raw += [{"type": "tcp", "host": "127.0.0.1", "port": tcp_listener, "name": "tcp-%d" % i} for i in range(5)]
    started = time.monotonic()
    report = check(raw, max_workers=len(raw))
    wall = time.monotonic() - started
    print("\nbenchmark: 50 probes (slowest 0.5 s) -> %.3f s wall" % wall)
    assert report.healthy, report.failure_message()
    assert wall < 1.5


def test_max_workers_limits_concurrency(http_server):
    raw = [{"type": "http", "url": http_server.url("/slow?s=0.3")}] * 4
    started = time.monotonic()
    assert check(raw, max_workers=2).healthy
    assert 0.55 < time.monotonic() - started < 1.5  # two rounds of two


def test_a_crashing_probe_does_not_hide_the_others(http_server, monkeypatch):
    def broken(probe):
        raise RuntimeError("boom")

    monkeypatch.setattr(probes, "check_tcp", broken)
    report = check([{"type": "http", "url": http_server.url("/ok")}, {"type": "tcp", "host": "h", "port": 1}])
    assert [r.ok for r in report.results] == [True, False]
    assert report.results[1].error == "probe crashed: RuntimeError: boom"


# --------------------------------------------------------------------------------------------------------
# container and exec, against a fake Docker client
# --------------------------------------------------------------------------------------------------------


def _inspect(status="running", health=None, restarts=0, exit_code=0, oom=False, log=None, streak=0):
    state = {
        "Status": status,
        "Running": status in ("running", "restarting"),
        "Restarting": status == "restarting",
        "ExitCode": exit_code,
        "OOMKilled": oom,
        "Error": "",
        "StartedAt": "2024-05-01T10:00:00Z",
        "FinishedAt": "2024-05-01T10:05:00Z",
    }
    if health:
        state["Health"] = {"Status": health, "FailingStreak": streak, "Log": log or []}
    return {
        "Id": "0123456789abcdef",
        "RestartCount": restarts,
        "State": state,
        "Config": {"Image": "registry:5000/demo-backend:1.0"},
    }


class FakeDocker:
    def __init__(self, containers=None, execs=None):
        self.containers = containers or {}
        self.execs = execs or {}
        self.exec_calls = []
        self.api_version = "1.41"

    def negotiate(self):
        return self.api_version

    def inspect_container(self, name, timeout=None):
        if name not in self.containers:
            raise DockerNotFound(404, "No such container: %s" % name)
        return self.containers[name]

    def container_logs(self, name, tail=50, timeout=None, **kwargs):
        return "line 1\nTraceback: database is locked\n", ""

    def exec_run(self, container, command, timeout=None, **kwargs):
        self.exec_calls.append((container, command, timeout))
        outcome = self.execs[container]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def run_with(fake, raw):
    return check(raw, client_factory=lambda host: fake)


CHECK_LOG = [
    {"Start": "s%d" % i, "End": "e%d" % i, "ExitCode": 1, "Output": "curl: (7) connection refused\n"} for i in range(7)
]


@pytest.mark.parametrize(
    "info, ok, error_part",
    [
        (_inspect(), True, None),
        (_inspect(health="healthy"), True, None),
        (
            _inspect(health="unhealthy", log=CHECK_LOG, streak=7),
            False,
            "health is unhealthy after 7 failing checks; last check exit 1: curl: (7) connection refused",
        ),
        (_inspect(health="starting"), False, "health is starting: the healthcheck has not passed yet"),
        (_inspect(status="exited", exit_code=137, oom=True), False, "container is exited (exit code 137, OOM killed"),
        (_inspect(status="restarting", exit_code=1), False, "container is restarting (last exit code 1)"),
        (_inspect(status="paused"), False, "container is paused"),
    ],
)
def test_container_states(info, ok, error_part):
    result = run_with(FakeDocker({"web": info}), [{"type": "container", "container": "web"}]).results[0]
    assert result.ok is ok
    if ok:
        assert result.error is None
    else:
        assert error_part in result.error
        assert "database is locked" in result.evidence["logs"]  # the last log lines come with a failure
    assert result.status == info["State"]["Status"]


def test_container_health_evidence_keeps_the_last_entries():
    info = _inspect(health="unhealthy", log=CHECK_LOG, streak=7)
    result = run_with(FakeDocker({"web": info}), [{"type": "container", "container": "web"}]).results[0]
    assert result.health == "unhealthy"
    assert [entry["start"] for entry in result.evidence["health_log"]] == ["s2", "s3", "s4", "s5", "s6"]
    assert result.evidence["health_log"][-1]["output"] == "curl: (7) connection refused"
    assert result.evidence["image"] == "registry:5000/demo-backend:1.0"


def test_container_max_restarts():
    fake = FakeDocker({"web": _inspect(health="healthy", restarts=5)})
    assert run_with(fake, [{"type": "container", "container": "web", "max_restarts": 5}]).healthy
    result = run_with(fake, [{"type": "container", "container": "web", "max_restarts": 2}]).results[0]
    assert not result.ok and result.error == "restarted 5 times (max_restarts 2)"


def test_container_missing():
    result = run_with(FakeDocker(), [{"type": "container", "container": "ghost"}]).results[0]
    assert not result.ok and result.status == "missing" and "no container named 'ghost'" in result.error


def test_container_probe_retries_until_healthy():
    fake = FakeDocker({"web": _inspect(health="starting")})
    calls = []

    def inspect(name, timeout=None):
        calls.append(name)
        return _inspect(health="healthy") if len(calls) >= 3 else _inspect(health="starting")

    fake.inspect_container = inspect
    result = run_with(fake, [{"type": "container", "container": "web", "retries": 5, "delay": 0.01}]).results[0]
    assert result.ok and result.attempts == 3 and result.health == "healthy"


@pytest.mark.parametrize(
    "outcome, raw_extra, ok, error_part",
    [
        (ExecResult(0, b"mysqld is alive\n"), {}, True, None),
        (ExecResult(0, b"mysqld is alive\n"), {"stdout_pattern": "alive"}, True, None),
        (ExecResult(0, b"hello\n"), {"stdout_pattern": "alive"}, False, "stdout does not match /alive/: 'hello'"),
        (
            ExecResult(1, b"", b"error: 'Can't connect to local server'\n"),
            {},
            False,
            "exit code 1 (expected 0): error: 'Can't connect to local server'",
        ),
        (ExecResult(3, b""), {"expect_rc": 3}, True, None),
        (
            DockerConflict(
                409,
                "Docker API POST /x: HTTP 409: Container 0123 is not running",
                "POST",
                "/x",
                "Container 0123 is not running",
            ),
            {},
            False,
            "cannot exec in container 'db': Container 0123 is not running",
        ),
        (DockerTimeout("slow"), {"timeout": 0.5}, False, "command did not finish within 0.5 s"),
        (DockerNotFound(404, "No such container: db"), {}, False, "no container named 'db'"),
    ],
)
def test_exec_outcomes(outcome, raw_extra, ok, error_part):
    fake = FakeDocker(execs={"db": outcome})
    raw = dict({"type": "exec", "container": "db", "command": ["mysqladmin", "ping"]}, **raw_extra)
    result = run_with(fake, [raw]).results[0]
    assert result.ok is ok, result.error
    if error_part:
        assert error_part in result.error
    assert fake.exec_calls[0][:2] == ("db", ["mysqladmin", "ping"])
    if isinstance(outcome, ExecResult):
        assert result.status == outcome.exit_code
        assert result.evidence["stdout"] == outcome.stdout_text


def test_docker_unreachable_fails_only_docker_probes(http_server, tmp_path):
    report = check(
        [
            {"type": "http", "name": "api", "url": http_server.url("/ok")},
            {"type": "container", "name": "web", "container": "web"},
            {"type": "exec", "name": "db", "container": "db", "command": ["true"]},
        ],
        docker_host="unix://%s/docker.sock" % tmp_path,
    )
    assert report.failed_probes == ["web", "db"]
    for result in report.results[1:]:
        assert "Docker socket %s/docker.sock does not exist" % tmp_path in result.error


def test_unsupported_docker_host_is_reported_per_probe():
    report = check([{"type": "container", "container": "web"}], docker_host="ssh://somewhere")
    assert "is not supported" in report.results[0].error


def test_run_probes_with_typed_probes(http_server):
    report = run_probes([HttpProbe(name="typed", url=http_server.url("/ok"))])
    assert report.healthy and report.results[0].name == "typed"


# --------------------------------------------------------------------------------------------------------
# https, and per-probe client settings under concurrency
# --------------------------------------------------------------------------------------------------------


def test_https_probe_validates_the_certificate(tls_server):  # noqa: F811
    result = one({"type": "http", "url": tls_server.url("/ok"), "timeout": 3})
    assert not result.ok and result.status is None
    assert "TLS certificate of %s not trusted" % tls_server.url("/ok") in result.error
    assert one({"type": "http", "url": tls_server.url("/ok"), "validate_certs": False}).ok


def test_concurrent_probes_keep_their_own_redirect_setting(http_server):
    # ansible's Request.open installs its opener process-wide; probes must not pick up each other's.
    raw = [
        {"type": "http", "name": "p%d" % i, "url": http_server.url("/redirect"), "follow_redirects": bool(i % 2)}
        for i in range(40)
    ]
    for _round in range(3):
        report = check(raw)
        assert [r.status for r in report.results] == [200 if i % 2 else 302 for i in range(40)]
