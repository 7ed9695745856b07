# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The rolling replacement of one service: start beside, gate, canary, switch, bake, drain, retire; or undo.

Private to this collection: not a public API, it may change in any release.

An upgrade, a rollback and the undo of a service that an all-or-nothing release already moved all use it. The
steps are those of docs/architecture.md ("Contracts") and the package docstring (_upgrade/__init__.py). Before each
step the rollout reports its phase (``on_phase``), which the run writes to the release record, so a run killed
at any point is put in order from there by the next one (_upgrade/recover.py, docs/state-machine.md). Every step
of an undo is tried even when one before it failed; the first error is kept and the undo failures are added.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import functools
import time
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._compose import docker_health
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerError
from ansible_collections.opsbook.stack.plugins.module_utils._probes import HttpProbe, check_http
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.bake import BakeVerdict, judge_bake
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.compose_cli import tail
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.docker_facts import parse_docker_time
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.drain import (
    RELOAD_SETTLE_S,
    DrainReport,
    drain,
    target_of,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.host import Host
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import (
    WATCH_INTERVAL_S,
    Container,
    PhaseHook,
    Run,
    ServicePlan,
    UndoIncomplete,
    UpgradeError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.traffic import GATE_HEADER
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import Server, UpstreamError

# What a failed step raises; the rollout undoes itself on any of them.
STEP_ERRORS = (UpgradeError, UpstreamError, DockerError, OSError)
DEFAULT_HEALTH_INTERVAL_NS = 30_000_000_000
# How long a stop-first recreate watches its containers after they passed, so a crash loop is seen.
RECREATE_SETTLE_S = 3.0
# Between the gate's first requests while a worker may still hold the closed gate's empty answer.
GATE_RETRY_S = 0.05


def _no_phase(plan: ServicePlan, phase: str, old: list[Container], new: list[Container]) -> None:
    """The phase hook of a rollout whose phases nobody records (the tests of one step)."""


def servers_of(containers: list[Container]) -> list[Server]:
    return [Server(address=c.address, comment=c.name) for c in containers if c.host_port]


class Rollout:
    def __init__(self, host: Host, run: Run):
        self.host = host
        self.s = host.s
        self.docker = host.docker
        self.traffic = host.traffic
        self.run = run
        # Whether the service being replaced has had its upstream switched to new containers (then a failure
        # switches it back before it removes them).
        self._switched = False
        self.on_phase: PhaseHook = _no_phase

    # -- gate ---------------------------------------------------------------------------------------------

    def wait_healthy(self, new: list[Container], needs_health: bool) -> None:
        """Watch the new containers until all are healthy; abort at once on unhealthy, exit or restart."""
        deadline = time.monotonic() + self.s.health_timeout_s
        pending = {c.id: c for c in new}
        while pending:
            for cid, container in list(pending.items()):
                info = self.docker.inspect(cid)
                if info is None:
                    raise UpgradeError(
                        "new container %s disappeared during the health gate" % container.name,
                        {"failed_container": container.name},
                    )
                state = info.get("State") or {}
                health = docker_health(info)
                if state.get("Restarting") or state.get("Status") in ("exited", "dead") or info.get("RestartCount"):
                    raise self._gate_failure(
                        container,
                        "exited or restarted (state %s, exit code %s)" % (state.get("Status"), state.get("ExitCode")),
                        info,
                    )
                if health == "unhealthy":
                    raise self._gate_failure(container, "became unhealthy", info)
                if (
                    health == "healthy"
                    or (health is None and state.get("Running"))
                    or (not needs_health and state.get("Running"))
                ):
                    del pending[cid]
            if not pending:
                break
            if time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending.values())
                raise UpgradeError(
                    "%s not healthy within %g s (health_timeout)" % (names, self.s.health_timeout_s),
                    {"evidence": [self.docker.evidence(c) for c in pending.values()]},
                )
            time.sleep(WATCH_INTERVAL_S)

    def _gate_failure(self, container: Container, what: str, info: dict[str, t.Any]) -> UpgradeError:
        health = (info.get("State") or {}).get("Health") or {}
        log = health.get("Log") or []
        detected = None
        if log:
            ended = parse_docker_time(log[-1].get("End"))
            if ended is not None:
                detected = round(max(time.time() - ended, 0.0), 3)
        healthcheck = (info.get("Config") or {}).get("Healthcheck") or {}
        interval_ns = healthcheck.get("Interval") or DEFAULT_HEALTH_INTERVAL_NS
        evidence = self.docker.evidence(container)
        evidence["aborted_after_last_check_s"] = detected
        evidence["health_interval_s"] = interval_ns / 1e9
        return UpgradeError(
            "new container %s %s: gate failed before the switch" % (container.name, what),
            {"evidence": [evidence], "failing_probe": "docker health of %s" % container.name},
        )

    def readiness(self, new: list[Container]) -> None:
        for container in new:
            if not container.host_port:
                continue
            probe = HttpProbe(
                name="readiness:%s" % container.name,
                url="http://127.0.0.1:%d%s" % (container.host_port, self.s.readiness_path),
                timeout=3.0,
                use_proxy=False,
            )
            deadline = time.monotonic() + self.s.readiness_timeout_s
            while True:
                result = check_http(probe)
                if result.ok:
                    break
                if time.monotonic() > deadline:
                    raise UpgradeError(
                        "new container %s: %s answered %s" % (container.name, probe.url, result.error),
                        {"failing_probe": result.to_dict(), "evidence": [self.docker.evidence(container)]},
                    )
                time.sleep(WATCH_INTERVAL_S)

    def through_gate(self, service: str, new: list[Container]) -> None:
        """gate_requests synthetic requests through Nginx to the new containers, each answered 200. Until the
        gate has settled (a worker may still hold the closed gate's empty answer) a 502 is retried, not counted."""
        if self.s.gate_requests <= 0:
            return
        settled_at = self.traffic.open_gate(service, [Server(address=c.address, comment=c.name) for c in new])
        try:
            passed = 0
            while passed < self.s.gate_requests:
                probe = HttpProbe(
                    name="gate:%s#%d" % (service, passed + 1),
                    url="http://127.0.0.1:%d%s" % (self.s.gate_port, self.s.readiness_path),
                    headers={GATE_HEADER: service},
                    timeout=5.0,
                    use_proxy=False,
                )
                result = check_http(probe)
                if result.ok:
                    passed += 1
                elif result.status == 502 and time.monotonic() < (settled_at or 0.0):
                    time.sleep(GATE_RETRY_S)
                else:
                    raise UpgradeError(
                        "synthetic request %d of %d through Nginx to the new %s containers failed: %s"
                        % (passed + 1, self.s.gate_requests, service, result.error),
                        {"failing_probe": result.to_dict(), "evidence": [self.docker.evidence(c) for c in new]},
                    )
        finally:
            self.traffic.close_gate(service)

    # -- bake ---------------------------------------------------------------------------------------------

    def _went_bad(self, new: list[Container]) -> BakeVerdict | None:
        for container in new:
            info = self.docker.inspect(container.id) or {}
            state = info.get("State") or {}
            health = docker_health(info)
            if health == "unhealthy" or not state.get("Running"):
                return BakeVerdict(
                    False,
                    0,
                    0,
                    0.0,
                    None,
                    "new container %s became %s during the bake" % (container.name, health or state.get("Status")),
                )
        return None

    def _probe_site(self, path: str) -> dict[str, t.Any] | None:
        """One request through the site; a sample only when it got no answer (answers are in the access log)."""
        headers = {"Host": self.s.nginx_host_header} if self.s.nginx_host_header else {}
        result = check_http(
            HttpProbe(
                name="bake",
                url=self.s.nginx_url.rstrip("/") + path,
                timeout=5.0,
                headers=headers,
                status=tuple(range(100, 500)),
                use_proxy=False,
            )
        )
        return {"status": 0, "ms": result.latency_ms} if result.status is None else None

    def bake(self, service: str, new: list[Container], seconds: float, offset: int, share: float = 1.0) -> BakeVerdict:
        addresses = {c.address for c in new}
        paths = self.s.bake_paths or [self.s.readiness_path]
        probe_samples: list[dict[str, t.Any]] = []
        deadline = time.monotonic() + seconds
        gap = 1.0 / self.s.bake_rate if self.s.bake_rate > 0 else seconds
        n = 0
        while True:
            bad_container = self._went_bad(new)
            if bad_container is not None:
                return bad_container
            if self.s.bake_rate > 0:
                sample = self._probe_site(paths[n % len(paths)])
                n += 1
                if sample is not None:
                    probe_samples.append(sample)
            log_samples, bad = self.host.access_log.samples(offset, addresses)
            final = time.monotonic() >= deadline
            # A canary sees only its share of the requests (the probes through the site are split too).
            verdict = judge_bake(
                log_samples + probe_samples,
                self.s.bake_max_error_ratio,
                self.s.bake_max_latency_ms,
                max(1, int(self.s.bake_min_requests * share)),
                final,
            )
            if verdict is not None:
                if not verdict.ok:
                    self.run.evidence["bake_failing_requests"] = bad
                return verdict
            time.sleep(gap)

    # -- the whole thing ----------------------------------------------------------------------------------

    def _new_containers(self, plan: ServicePlan, old_ids: set[str]) -> list[Container]:
        return [c for c in self.docker.containers(plan.service, plan.port) if c.id not in old_ids]

    def replace(self, plan: ServicePlan) -> None:
        """Move one service from plan.from_image to plan.to_image; raise UpgradeError with evidence on failure."""
        if plan.role == "stateful":
            self._recreate(plan)
            return
        service = plan.service
        old = [c for c in self.docker.containers(service, plan.port) if c.state == "running"]
        old_ids = {c.id for c in old}
        replicas = max(len(old), 1) if old else plan.replicas
        self.on_phase(plan, "starting", old, [])
        compose_before = self.host.compose_file.set_image(service, plan.to_image)
        self.run.step("%s: compose.yaml image set to %s" % (service, plan.to_image))
        new: list[Container] = []
        self._switched = False
        try:
            scale = len(old) + replicas
            done = self.host.compose.up(service, "--no-recreate", "--scale", "%s=%d" % (service, scale))
            if not done.ok:
                raise UpgradeError("docker compose up --scale %s=%d failed: %s" % (service, scale, tail(done)))
            new = self._new_containers(plan, old_ids)
            started = ", ".join(c.name for c in new)
            beside = ", ".join(c.name for c in old) or "nothing"
            self.run.step("%s: started %s beside %s" % (service, started, beside))
            self.run.mark("%s_started" % service)
            if not new:
                raise UpgradeError("docker compose created no new container for %s" % service)
            self.wait_healthy(new, self.s.docker_health_gate)
            self.run.step(
                "%s: new containers running%s" % (service, " and healthy" if self.s.docker_health_gate else "")
            )
            if plan.port is not None:
                new = self._new_containers(plan, old_ids)
                self._gate_and_switch(plan, old, new)
            else:
                self.on_phase(plan, "gated", old, new)
        except STEP_ERRORS as exc:
            self._raise_undone(exc, self._undo(plan, old, new, compose_before, self._switched, exc))
        self.on_phase(plan, "draining", old, new)
        self.finish(plan, old, new)

    def finish(self, plan: ServicePlan, old: list[Container], new: list[Container]) -> None:
        """After the bake: drain and retire the old containers, then the upstream follows Docker's state."""
        service = plan.service
        self._retire(service, old)
        if plan.port is not None:
            if not self.s.docker_health_gate:
                # The switch did not wait for the healthcheck's first pass (a rollback to a warm release), but the
                # shared upstream function lists healthy containers only: re-rendering now would drop the new
                # containers still "starting". Wait for their first pass; if it never comes, keep the switched file.
                try:
                    self.wait_healthy(new, True)
                except UpgradeError as exc:
                    self.run.warnings.append(
                        "%s: upstream left as switched, not re-read from Docker: %s" % (service, exc)
                    )
                    self.run.mark("%s_done" % service)
                    return
            self.traffic.sync_from_docker(service, plan.port)
        self.run.mark("%s_done" % service)

    @staticmethod
    def _raise_undone(exc: Exception, undo_failures: list[str]) -> t.NoReturn:
        """The step's own error again, or, when a step of the undo failed too, both (UndoIncomplete)."""
        if not undo_failures:
            raise exc
        result = dict(exc.result) if isinstance(exc, UpgradeError) else {}
        result["undo_failures"] = undo_failures
        raise UndoIncomplete(
            "%s; the undo did not finish (%s), the next run puts the project in order"
            % (exc, "; ".join(undo_failures)),
            undo_failures,
            result,
        ) from exc

    def _gate_and_switch(self, plan: ServicePlan, old: list[Container], new: list[Container]) -> None:
        """Readiness, the gate, the canary, the switch and the bake of a service with a port."""
        service = plan.service
        missing = [c.name for c in new if not c.host_port]
        if missing:
            raise UpgradeError("new containers %s publish no port for %s" % (", ".join(missing), plan.port))
        self.readiness(new)
        self.run.step("%s: readiness %s answered on every new container" % (service, self.s.readiness_path))
        self.through_gate(service, new)
        if self.s.gate_requests:
            self.run.step("%s: %d synthetic requests through Nginx passed" % (service, self.s.gate_requests))
        self.run.mark("%s_gate_passed" % service)
        old_servers = servers_of(old)
        new_servers = [Server(address=c.address, comment=c.name) for c in new]
        self.on_phase(plan, "gated", old, new)
        if self.s.canary_weight and old_servers:
            weight_new, weight_old = self.s.canary_weight, 100 - self.s.canary_weight
            self.on_phase(plan, "switched", old, new)
            self.traffic.switch(
                service,
                [Server(s.address, weight=weight_old, comment=s.comment) for s in old_servers]
                + [Server(s.address, weight=weight_new, comment=s.comment) for s in new_servers],
            )
            self._switched = True
            self.run.step("%s: canary, new containers take %d%% of requests" % (service, weight_new))
            offset = self.host.access_log.offset()
            verdict = self.bake(service, new, self.s.canary_s, offset, share=weight_new / 100.0)
            self.run.evidence.setdefault("canary", {})[service] = verdict.to_dict()
            if not verdict.ok:
                raise UpgradeError("%s canary failed: %s" % (service, verdict.reason))
        offset = self.host.access_log.offset()
        self.on_phase(plan, "switched", old, new)
        self.traffic.switch(service, new_servers)
        self._switched = True
        self.run.mark("%s_switched" % service)
        self.run.step("%s: upstream switched to the new containers" % service)
        self.on_phase(plan, "baking", old, new)
        verdict = self.bake(service, new, self.s.bake_s, offset)
        self.run.evidence.setdefault("bake", {})[service] = verdict.to_dict()
        if not verdict.ok:
            raise UpgradeError("%s bake failed: %s" % (service, verdict.reason))
        self.run.step(
            "%s: bake passed (%d requests, %d errors, p95 %s ms)"
            % (service, verdict.requests, verdict.errors, verdict.p95_ms)
        )

    def _undo(
        self,
        plan: ServicePlan,
        old: list[Container],
        new: list[Container],
        compose_before: str | None,
        switched: bool,
        exc: Exception | None,
    ) -> list[str]:
        """Traffic back to the old containers, the new ones drained and removed, compose.yaml back: each step is
        tried even when one before failed. compose_before None: put the service's image back to plan.from_image
        in the text as it is now (a rerun after a kill). Returns what failed, one sentence per step."""
        service = plan.service
        failures: list[str] = []

        def attempt(what: str, step: t.Callable[[], t.Any]) -> bool:
            try:
                step()
                return True
            except STEP_ERRORS as undo_exc:
                failures.append("%s failed: %s" % (what, undo_exc))
                return False

        if isinstance(exc, UpgradeError):
            self.run.evidence.update({k: v for k, v in exc.result.items() if k not in self.run.evidence})
        old_servers = servers_of(old)
        if switched and old_servers:
            if attempt("switching the upstream back", lambda: self.traffic.switch(service, old_servers)):
                self.run.mark("%s_switched_back" % service)
                self.run.step("%s: upstream switched back to the old containers" % service)
        if new and "evidence" not in self.run.evidence:
            attempt("collecting evidence", lambda: self._collect_evidence(new))
        if switched and new:
            attempt(
                "draining the new containers",
                lambda: self.run.step(
                    "%s: drained the new containers (%s)" % (service, self._drain(service, new).summary())
                ),
            )
        for container in new:
            remove = functools.partial(self.docker.stop_and_remove, container, grace_s=None if switched else 1)
            attempt("removing %s" % container.name, remove)
        attempt("closing the gate", lambda: self.traffic.close_gate(service))
        if compose_before is None:
            restored = attempt(
                "putting compose.yaml back", lambda: self.host.compose_file.set_image(service, plan.from_image)
            )
        else:
            restored = attempt("putting compose.yaml back", lambda: self.host.compose_file.restore(compose_before))
        if restored:
            self.run.step("%s: removed the new containers, compose.yaml back to %s" % (service, plan.from_image))
        if plan.port is not None and old:
            # A refresh, not a step of the undo: when it is refused (no old replica healthy at this instant), the
            # upstream keeps the old servers it lists, which is what the undo wants.
            try:
                self.traffic.sync_from_docker(service, plan.port)
            except STEP_ERRORS as refresh_exc:
                self.run.warnings.append(
                    "%s: the upstream was not re-read from Docker after the undo: %s" % (service, refresh_exc)
                )
        for failure in failures:
            self.run.warnings.append("%s: undo step %s" % (service, failure))
        return failures

    def undo(self, plan: ServicePlan, old: list[Container], new: list[Container], switched: bool) -> list[str]:
        """The undo of a run that was killed (no error of its own; compose.yaml is edited back, not restored)."""
        return self._undo(plan, old, new, None, switched, None)

    def _collect_evidence(self, new: list[Container]) -> None:
        self.run.evidence["evidence"] = [self.docker.evidence(c) for c in new[:2]]

    def _drain(self, service: str, containers: list[Container]) -> DrainReport:
        """Wait until nothing can still reach these containers: no connection from the host to their published
        port or their own address, the Nginx workers of before the last reload exited, the resolver's validity
        passed since the switch (docs/drain.md); at most drain_timeout. Reported in evidence.drain and warned
        about when it had to cut connections."""
        targets = [target_of(c.name, c.host_port, self.docker.inspect(c.id)) for c in containers]
        switched = [v for k, v in self.run.timings.items() if k in (service + "_switched", service + "_switched_back")]
        # At least a second after the switch: the master signals its old workers a moment after the reload.
        settle = max(getattr(self.traffic, "resolver_valid_s", 0.0), RELOAD_SETTLE_S)
        settle_until = self.run.started + max(switched) + settle if switched else 0.0
        not_before = min((c.created for c in containers), default=0.0) - 1.0
        report = drain(targets, self.traffic.workers_before_switch, self.s.drain_timeout_s, settle_until, not_before)
        self.run.evidence.setdefault("drain", {})[service] = report.to_dict()
        self.run.mark("%s_drained" % service)
        if report.cut:
            self.run.warnings.append(
                "%s: drain_timeout (%g s) passed with %d of %d connection(s) still open to %s; they were ended "
                "when the containers stopped (a stream longer than drain_timeout is cut: raise drain_timeout)"
                % (
                    service,
                    self.s.drain_timeout_s,
                    report.cut,
                    report.waited_for,
                    ", ".join(c.name for c in containers),
                )
            )
        return report

    def _retire(self, service: str, old: list[Container]) -> None:
        """Stop the old containers only once their streams ended (or drain_timeout cut them), then remove them."""
        self.run.step("%s: drained the old containers (%s)" % (service, self._drain(service, old).summary()))
        for container in old:
            self.docker.stop_and_remove(container)
        if old:
            self.run.step("%s: stopped and removed %s" % (service, ", ".join(c.name for c in old)))

    def _recreate(self, plan: ServicePlan) -> None:
        """Stop-first: every container of the service must run and stay healthy, else the previous image back."""
        service = plan.service
        self.run.warnings.append(
            "%s is stateful: recreated stop-first (%s -> %s), so it was unavailable while it restarted"
            % (service, plan.from_image, plan.to_image)
        )
        old = [c for c in self.docker.containers(service) if c.state == "running"]
        self.on_phase(plan, "starting", old, [])
        compose_before = self.host.compose_file.set_image(service, plan.to_image)
        try:
            done = self.host.compose.up(service, "--force-recreate")
            if not done.ok:
                raise UpgradeError("docker compose up --force-recreate %s failed: %s" % (service, tail(done)))
            self.check_recreated(service)
        except STEP_ERRORS as exc:
            if isinstance(exc, UpgradeError):
                self.run.evidence.update(exc.result)
            self._raise_undone(exc, self.recreate_back(plan, compose_before))
        self.on_phase(plan, "gated", old, self.docker.containers(service))
        self.run.step("%s: recreated stop-first on %s" % (service, plan.to_image))

    def check_recreated(self, service: str) -> None:
        """All the service's containers (any state: an exited one counts) healthy, and still so a moment later."""
        new = self.docker.containers(service)
        if not new:
            raise UpgradeError("docker compose up --force-recreate %s left no container of the service" % service)
        self.wait_healthy(new, True)
        settle = time.monotonic() + RECREATE_SETTLE_S
        while time.monotonic() < settle:
            time.sleep(WATCH_INTERVAL_S)
            self.wait_healthy(new, False)
        if len(self.docker.containers(service)) != len(new):
            raise UpgradeError("the containers of %s changed while they settled (a crash loop?)" % service)

    def recreate_back(self, plan: ServicePlan, compose_before: str) -> list[str]:
        """compose.yaml back and the previous image recreated; what failed, one sentence per step."""
        failures: list[str] = []
        try:
            self.host.compose_file.restore(compose_before)
        except STEP_ERRORS as exc:
            failures.append("putting compose.yaml back failed: %s" % exc)
        try:
            again = self.host.compose.up(plan.service, "--force-recreate")
            if not again.ok:
                failures.append("recreating %s from %s failed: %s" % (plan.service, plan.from_image, tail(again)))
            else:
                self.run.step("%s: recreated again from %s after the failure" % (plan.service, plan.from_image))
        except STEP_ERRORS as exc:
            failures.append("recreating %s from %s failed: %s" % (plan.service, plan.from_image, exc))
        return failures


__all__ = ["RECREATE_SETTLE_S", "STEP_ERRORS", "Rollout", "servers_of"]
