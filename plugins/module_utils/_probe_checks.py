# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""One attempt of each health probe type (http, tcp, container, exec), with the evidence of a failure.

Private to this collection: not a public API, it may change in any release.

HTTP goes through _http (ansible-core's ``ansible.module_utils.urls``), Docker through _docker, and whether a
container is healthy is _compose's health verdict; the checks add the details an on-call person acts on.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import re
import socket
import time
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._compose import (
    NOT_RUNNING,
    STARTING,
    UNHEALTHY,
    docker_health,
    health_verdict,
)
from ansible_collections.opsbook.stack.plugins.module_utils._docker import (
    DockerClient,
    DockerConflict,
    DockerError,
    DockerNotFound,
    DockerTimeout,
)
from ansible_collections.opsbook.stack.plugins.module_utils._http import (
    TRANSPORT_ERRORS,
    HttpConfigError,
    HttpSettings,
    describe_error,
    open_http,
    response_socket,
)
from ansible_collections.opsbook.stack.plugins.module_utils._probe_spec import (
    ContainerProbe,
    ExecProbe,
    HttpProbe,
    ProbeResult,
    TcpProbe,
)

# Enough of a body to match a pattern against; an endless (SSE) body must not keep a probe reading forever.
BODY_LIMIT = 1024 * 1024
EVIDENCE_CHARS = 2000
HEALTH_LOG_ENTRIES = 5
LOG_TAIL_LINES = 20
USER_AGENT = "opsbook.stack health_check"


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


def _tail(text: str, limit: int = EVIDENCE_CHARS) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


def _last_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    return line if len(line) <= limit else line[:limit] + "..."


def _read_body(resp: t.Any, probe: HttpProbe, deadline: float, pattern: re.Pattern[str] | None) -> tuple[bytes, bool]:
    """Read the body until its end, the size limit, or (with a pattern) the first match.

    Returns (body, complete). The per-read socket timeout alone would let a server that trickles bytes keep
    the probe busy forever, so the attempt's deadline is checked between reads.
    """
    body = bytearray()
    reader = getattr(resp, "read1", None) or resp.read
    while len(body) < BODY_LIMIT:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("body not complete")
        sock = response_socket(resp)
        if sock is not None:
            sock.settimeout(remaining)
        chunk = reader(65536)
        if not chunk:
            return bytes(body), True
        body.extend(chunk)
        if pattern is not None and pattern.search(body.decode("utf-8", errors="replace")):
            return bytes(body), False
    return bytes(body[:BODY_LIMIT]), False


def _http_settings(probe: HttpProbe) -> HttpSettings:
    return HttpSettings(
        url=probe.url,
        timeout=probe.timeout,
        validate_certs=probe.validate_certs,
        headers=dict(probe.headers),
        use_proxy=probe.use_proxy,
        follow_redirects=probe.follow_redirects,
        http_agent=USER_AGENT,
    )


def check_http(probe: HttpProbe) -> ProbeResult:
    result = ProbeResult(probe.name, probe.probe_type, probe.target, ok=False)
    pattern = re.compile(probe.body_pattern) if probe.body_pattern else None
    started = time.monotonic()
    deadline = started + probe.timeout
    try:
        resp = open_http(_http_settings(probe), probe.method, probe.url)
        try:
            code = resp.status
            body, complete = _read_body(resp, probe, deadline, pattern)
        finally:
            resp.close()
    except (HttpConfigError, *TRANSPORT_ERRORS) as exc:
        result.latency_ms = _ms(time.monotonic() - started)
        result.error = result.detail = describe_error(exc, probe.url, probe.timeout)
        return result
    elapsed = time.monotonic() - started
    result.latency_ms = _ms(elapsed)
    result.status = code

    reasons = []
    if code not in probe.status:
        expected = " or ".join(str(c) for c in probe.status)
        reasons.append("HTTP %s (expected %s)" % (code, expected))
        location = resp.headers.get("Location") if getattr(resp, "headers", None) is not None else None
        if location and 300 <= code < 400:
            reasons[-1] += ", redirects to %s (set follow_redirects: true to follow)" % location
    text = body.decode("utf-8", errors="replace")
    if pattern is not None and not pattern.search(text):
        reasons.append(
            "body does not match /%s/%s"
            % (probe.body_pattern, "" if complete else " in its first %d bytes" % len(body))
        )
    if probe.latency_budget_ms is not None and result.latency_ms > probe.latency_budget_ms:
        reasons.append("took %g ms, over the latency budget of %g ms" % (result.latency_ms, probe.latency_budget_ms))

    if reasons:
        result.error = result.detail = "; ".join(reasons)
        result.evidence = {"body": _tail(text, 500)} if text else {}
    else:
        result.ok = True
        result.detail = "HTTP %s in %g ms" % (code, result.latency_ms)
    return result


def check_tcp(probe: TcpProbe) -> ProbeResult:
    result = ProbeResult(probe.name, probe.probe_type, probe.target, ok=False)
    started = time.monotonic()
    try:
        sock = socket.create_connection((probe.host, probe.port), timeout=probe.timeout)
    except OSError as exc:
        result.latency_ms = _ms(time.monotonic() - started)
        result.status = "closed"
        result.error = result.detail = describe_error(exc, probe.target, probe.timeout)
        return result
    result.latency_ms = _ms(time.monotonic() - started)
    sock.close()
    result.ok = True
    result.status = "open"
    result.detail = "port open, connected in %g ms" % result.latency_ms
    return result


def _health_log(health: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    entries = health.get("Log") or []
    return [
        {
            "start": entry.get("Start"),
            "end": entry.get("End"),
            "exit_code": entry.get("ExitCode"),
            "output": _tail((entry.get("Output") or "").strip(), 500),
        }
        for entry in entries[-HEALTH_LOG_ENTRIES:]
    ]


def _last_check(health: dict[str, t.Any]) -> str:
    log = health.get("Log") or []
    if not log:
        return ""
    output = _last_line(log[-1].get("Output") or "")
    return "; last check exit %s%s" % (log[-1].get("ExitCode"), ": %s" % output if output else "")


def _not_running(status: str, state: dict[str, t.Any]) -> str:
    oom = ", OOM killed" if state.get("OOMKilled") else ""
    if status == "restarting" or state.get("Restarting"):
        return "container is restarting (last exit code %s)%s" % (state.get("ExitCode"), oom)
    what = "container is %s" % status
    if status in ("exited", "dead"):
        what += " (exit code %s%s, finished %s)" % (state.get("ExitCode"), oom, state.get("FinishedAt"))
    if state.get("Error"):
        what += ": %s" % state["Error"]
    return what


def _container_failure(probe: ContainerProbe, info: dict[str, t.Any]) -> list[str]:
    """Why the container fails the probe: _compose's verdict, told with the state and health log details."""
    state = info.get("State") or {}
    health = state.get("Health") or {}
    verdict = health_verdict(info)
    reasons = []
    if verdict.status == NOT_RUNNING:
        reasons.append(_not_running(verdict.state, state))
    elif verdict.status == STARTING:
        reasons.append("health is starting: the healthcheck has not passed yet%s" % _last_check(health))
    elif verdict.status == UNHEALTHY:
        reasons.append(
            "health is %s after %s failing checks%s"
            % (verdict.health, health.get("FailingStreak", "?"), _last_check(health))
        )
    restarts = info.get("RestartCount") or 0
    if probe.max_restarts is not None and restarts > probe.max_restarts:
        reasons.append("restarted %d times (max_restarts %d)" % (restarts, probe.max_restarts))
    return reasons


def _logs_tail(client: DockerClient, container: str, timeout: float) -> str:
    try:
        stdout, stderr = client.container_logs(container, tail=LOG_TAIL_LINES, timeout=timeout)
    except DockerError as exc:
        return "(logs unavailable: %s)" % exc
    return _tail((stdout + stderr).strip())


def check_container(probe: ContainerProbe, client: DockerClient, final: bool = True) -> ProbeResult:
    result = ProbeResult(probe.name, probe.probe_type, probe.target, ok=False)
    started = time.monotonic()
    try:
        info = client.inspect_container(probe.container, timeout=probe.timeout)
    except DockerNotFound:
        result.latency_ms = _ms(time.monotonic() - started)
        result.status = "missing"
        result.error = result.detail = (
            "no container named %r (docker ps -a; is the compose project up?)" % probe.container
        )
        return result
    except DockerError as exc:
        result.latency_ms = _ms(time.monotonic() - started)
        result.error = result.detail = str(exc)
        return result
    result.latency_ms = _ms(time.monotonic() - started)
    state = info.get("State") or {}
    health = state.get("Health") or {}
    result.status = state.get("Status")
    result.health = docker_health(info) if docker_health(info) not in (None, "none") else None
    result.evidence = {
        "id": (info.get("Id") or "")[:12],
        "image": (info.get("Config") or {}).get("Image"),
        "state": state.get("Status"),
        "started_at": state.get("StartedAt"),
        "restart_count": info.get("RestartCount") or 0,
        "exit_code": state.get("ExitCode"),
        "oom_killed": bool(state.get("OOMKilled")),
    }
    if health:
        result.evidence["failing_streak"] = health.get("FailingStreak")
        result.evidence["health_log"] = _health_log(health)
    reasons = _container_failure(probe, info)
    if reasons:
        result.error = result.detail = "; ".join(reasons)
        if final:
            result.evidence["logs"] = _logs_tail(client, probe.container, probe.timeout)
    else:
        result.ok = True
        health_text = ", healthy" if result.health else " (no healthcheck)"
        result.detail = "running%s, %d restarts" % (health_text, result.evidence["restart_count"])
    return result


def check_exec(probe: ExecProbe, client: DockerClient) -> ProbeResult:
    result = ProbeResult(probe.name, probe.probe_type, probe.target, ok=False)
    started = time.monotonic()
    try:
        outcome = client.exec_run(probe.container, list(probe.command), timeout=probe.timeout)
    except DockerNotFound:
        result.error = "no container named %r (docker ps -a; is the compose project up?)" % probe.container
    except DockerConflict as exc:
        result.error = "cannot exec in container %r: %s" % (probe.container, exc.explanation)
    except DockerTimeout:
        result.error = (
            "command did not finish within %g s (it may still be running inside the container)" % probe.timeout
        )
    except DockerError as exc:
        result.error = str(exc)
    else:
        result.status = outcome.exit_code
        stdout, stderr = outcome.stdout_text, outcome.stderr_text
        result.evidence = {"exit_code": outcome.exit_code, "stdout": _tail(stdout), "stderr": _tail(stderr)}
        reasons = []
        if outcome.exit_code != probe.expect_rc:
            output = _last_line(stderr) or _last_line(stdout)
            reasons.append(
                "exit code %s (expected %s)%s" % (outcome.exit_code, probe.expect_rc, ": %s" % output if output else "")
            )
        if probe.stdout_pattern and not re.search(probe.stdout_pattern, stdout):
            reasons.append("stdout does not match /%s/: %r" % (probe.stdout_pattern, _last_line(stdout, 120)))
        if reasons:
            result.error = "; ".join(reasons)
        else:
            result.ok = True
    result.latency_ms = _ms(time.monotonic() - started)
    result.detail = result.error or "exit code %s in %g ms" % (result.status, result.latency_ms)
    return result
