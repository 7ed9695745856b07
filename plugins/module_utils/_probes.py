# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Health probes (http, tcp, container, exec) run concurrently, with results an on-call person can act on.

Private to this collection: not a public API, it may change in any release.

Used by the health_check module and by the modules that gate upgrades. This file runs a list of probes (one
thread each, retries, an outer time limit); the probe types and their validation are in _probe_spec, one
attempt of each type in _probe_checks. Both are re-exported here, so callers import from this one place.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import time
import typing as t
from concurrent.futures import ALL_COMPLETED, ThreadPoolExecutor, wait

from ansible_collections.opsbook.stack.plugins.module_utils._docker import (
    DEFAULT_DOCKER_HOST,
    DockerClient,
    DockerError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._probe_checks import (
    check_container,
    check_exec,
    check_http,
    check_tcp,
)
from ansible_collections.opsbook.stack.plugins.module_utils._probe_spec import (
    ALL_FIELDS,
    COMMON_FIELDS,
    DEFAULT_DELAY,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    FIELD_DEFAULTS,
    OPTIONAL_FIELDS,
    PROBE_TYPES,
    REQUIRED_FIELDS,
    ContainerProbe,
    ExecProbe,
    HealthReport,
    HttpProbe,
    Probe,
    ProbeConfigError,
    ProbeResult,
    TcpProbe,
    parse_probe,
    parse_probes,
)

# Probes mostly wait on I/O: one thread each, so 50 probes take as long as the slowest (health_check's
# documentation promises it; test_fifty_probes_take_the_time_of_the_slowest measures it).
MAX_DEFAULT_WORKERS = 64


def _attempt(probe: Probe, client_for: t.Callable[[], DockerClient], final: bool) -> ProbeResult:
    try:
        if isinstance(probe, HttpProbe):
            return check_http(probe)
        if isinstance(probe, TcpProbe):
            return check_tcp(probe)
        if isinstance(probe, ContainerProbe):
            return check_container(probe, client_for(), final=final)
        if isinstance(probe, ExecProbe):
            return check_exec(probe, client_for())
        raise TypeError("unknown probe class %s" % type(probe).__name__)
    except DockerError as exc:  # for instance an unsupported docker_host
        return ProbeResult(probe.name, probe.probe_type, probe.target, ok=False, error=str(exc), detail=str(exc))
    except Exception as exc:  # pylint: disable=broad-except
        # One broken probe must not hide the results of the others.
        message = "probe crashed: %s: %s" % (type(exc).__name__, exc)
        return ProbeResult(probe.name, probe.probe_type, probe.target, ok=False, error=message, detail=message)


def run_probe(probe: Probe, client_for: t.Callable[[], DockerClient]) -> ProbeResult:
    """Run a probe, retrying after `delay` seconds up to `retries` times until it passes."""
    attempts = 0
    while True:
        attempts += 1
        final = attempts > probe.retries
        result = _attempt(probe, client_for, final)
        if result.ok or final:
            result.attempts = attempts
            return result
        time.sleep(probe.delay)


class _LazyDockerClient:
    """One client for all probes, created on first use so that http/tcp-only runs never touch Docker."""

    def __init__(self, docker_host: str, factory: t.Callable[[str], DockerClient]):
        self.docker_host = docker_host
        self.factory = factory
        self._client: DockerClient | None = None

    def __call__(self) -> DockerClient:
        if self._client is None:
            self._client = self.factory(self.docker_host)
        return self._client


def run_probes(
    probes: list[Probe],
    docker_host: str = DEFAULT_DOCKER_HOST,
    max_workers: int | None = None,
    client_factory: t.Callable[[str], DockerClient] = DockerClient,
) -> HealthReport:
    """Run all probes concurrently; the wall time is that of the slowest probe, not the sum."""
    started = time.monotonic()
    if not probes:
        return HealthReport([], 0.0)
    workers = max_workers or min(MAX_DEFAULT_WORKERS, len(probes))
    lazy = _LazyDockerClient(docker_host, client_factory)
    if any(isinstance(probe, (ContainerProbe, ExecProbe)) for probe in probes):
        try:
            lazy().negotiate()  # once, before the threads start
        except DockerError:
            pass  # every Docker probe reports the error itself

    # Every check bounds its own I/O; this outer limit only catches what no socket timeout covers
    # (a DNS resolver that hangs), so one stuck probe cannot stall the report.
    limit_s = max(probe.worst_case_s for probe in probes) * (len(probes) / workers if workers < len(probes) else 1)
    limit_s += 10.0
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")
    try:
        futures = [pool.submit(run_probe, probe, lazy) for probe in probes]
        wait(futures, timeout=limit_s, return_when=ALL_COMPLETED)
        results = []
        for probe, future in zip(probes, futures, strict=True):
            if future.done():
                results.append(future.result())
            else:
                message = "probe did not finish within %g s (name resolution hanging?)" % limit_s
                results.append(
                    ProbeResult(
                        probe.name, probe.probe_type, probe.target, ok=False, error=message, detail=message, attempts=0
                    )
                )
    finally:
        pool.shutdown(wait=False)
    return HealthReport(results, (time.monotonic() - started) * 1000.0)


def check(
    raw_probes: t.Any,
    docker_host: str = DEFAULT_DOCKER_HOST,
    max_workers: int | None = None,
    client_factory: t.Callable[[str], DockerClient] = DockerClient,
) -> HealthReport:
    """Validate probe definitions (ProbeConfigError) and run them."""
    if max_workers is not None and max_workers < 1:
        raise ProbeConfigError("max_workers must be >= 1, got %r" % max_workers)
    return run_probes(
        parse_probes(raw_probes), docker_host=docker_host, max_workers=max_workers, client_factory=client_factory
    )


__all__ = [
    "ALL_FIELDS",
    "COMMON_FIELDS",
    "DEFAULT_DELAY",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "FIELD_DEFAULTS",
    "MAX_DEFAULT_WORKERS",
    "OPTIONAL_FIELDS",
    "PROBE_TYPES",
    "REQUIRED_FIELDS",
    "ContainerProbe",
    "ExecProbe",
    "HealthReport",
    "HttpProbe",
    "Probe",
    "ProbeConfigError",
    "ProbeResult",
    "TcpProbe",
    "check",
    "check_container",
    "check_exec",
    "check_http",
    "check_tcp",
    "parse_probe",
    "parse_probes",
    "run_probe",
    "run_probes",
]
