# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The words of a rolling upgrade: its settings, the services, the plan, the containers, the run, the errors.

Private to this collection: not a public API, it may change in any release.

Plain data only; every piece of the package (_upgrade/__init__.py lists them) speaks in these types.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import time
import typing as t
from dataclasses import dataclass, field

from ansible_collections.opsbook.stack.plugins.module_utils._docker import DEFAULT_DOCKER_HOST
from ansible_collections.opsbook.stack.plugins.module_utils._journal import DEFAULT_ROOT
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import DEFAULT_UPSTREAM_DIR

WATCH_INTERVAL_S = 0.2


class UpgradeError(Exception):
    """The run failed; ``result`` is what the module returns (plan, steps, evidence)."""

    def __init__(self, message: str, result: dict[str, t.Any] | None = None):
        super().__init__(message)
        self.result = result or {}


class BadRequest(UpgradeError):
    """The arguments are wrong (unknown service, missing tag, unknown release); nothing was changed."""


class UndoIncomplete(UpgradeError):
    """A step failed and a step of its undo failed too: the message keeps the first error, ``undo_failures`` the
    others; the record stays in its working phase so the next run puts the project in order."""

    def __init__(self, message: str, undo_failures: list[str], result: dict[str, t.Any] | None = None):
        super().__init__(message, result)
        self.undo_failures = undo_failures


@dataclass
class Settings:
    """Every knob of a run; the modules fill it from their arguments."""

    project: str
    project_dir: str
    journal_root: str = DEFAULT_ROOT
    docker_host: str = DEFAULT_DOCKER_HOST
    compose_file: str = ""
    pull: str = "missing"
    lock_timeout_s: float = 0.0
    keep: int = 10
    docker_health_gate: bool = True
    health_timeout_s: float = 300.0
    readiness_path: str = "/health"
    readiness_timeout_s: float = 30.0
    gate_requests: int = 10
    gate_port: int = 8099
    nginx_url: str = "http://127.0.0.1"
    nginx_host_header: str = ""
    bake_s: float = 30.0
    bake_paths: list[str] = field(default_factory=list)
    bake_rate: float = 10.0
    bake_min_requests: int = 20
    bake_max_error_ratio: float = 0.01
    bake_max_latency_ms: float = 1000.0
    canary_weight: int = 0
    canary_s: float = 30.0
    drain_timeout_s: float = 300.0
    upstream_dir: str = DEFAULT_UPSTREAM_DIR
    access_log: str = "/var/log/nginx/access.log"
    nginx_binary: str = "nginx"
    nginx_reload_command: list[str] | None = None
    check_mode: bool = False

    def __post_init__(self) -> None:
        if not self.compose_file:
            self.compose_file = os.path.join(self.project_dir, "compose.yaml")


@dataclass
class ComposeService:
    """A service as the rendered compose file describes it."""

    name: str
    image: str
    replicas: int
    role: str
    port: int | None
    has_healthcheck: bool


@dataclass
class ServicePlan:
    service: str
    role: str
    action: str  # none | rolling | recreate
    replicas: int
    from_image: str
    from_image_ids: list[str]
    from_digest: str
    to_image: str
    to_image_id: str
    to_digest: str
    port: int | None = None

    def to_dict(self) -> dict[str, t.Any]:
        return {
            "service": self.service,
            "role": self.role,
            "action": self.action,
            "replicas": self.replicas,
            "from": {"image": self.from_image, "digest": self.from_digest, "image_ids": self.from_image_ids},
            "to": {"image": self.to_image, "digest": self.to_digest, "image_id": self.to_image_id},
        }

    def reversed(self) -> ServicePlan:
        """The plan that moves the service back where this one took it from."""
        return ServicePlan(
            self.service,
            self.role,
            "rolling",
            self.replicas,
            self.to_image,
            [self.to_image_id],
            self.to_digest,
            self.from_image,
            self.from_image_ids[0] if self.from_image_ids else "",
            self.from_digest,
            self.port,
        )


@dataclass
class Container:
    id: str
    name: str
    image_id: str
    state: str
    number: int
    created: float
    host_port: int | None = None
    # Where Nginx reaches it (docs/routing.md): <bridge ip>:<container port>, as _upstream.container_address says.
    endpoint: str = ""

    @property
    def address(self) -> str:
        if self.endpoint:
            return self.endpoint
        return "127.0.0.1:%d" % self.host_port if self.host_port else ""


@dataclass
class Run:
    """What a run did, in order; returned to the module as the result."""

    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    evidence: dict[str, t.Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    reconciled: list[str] = field(default_factory=list)
    rolled_back_to: str = ""
    started: float = field(default_factory=time.monotonic)

    def step(self, text: str) -> None:
        self.steps.append("%6.2fs %s" % (time.monotonic() - self.started, text))

    def mark(self, name: str) -> None:
        self.timings[name] = round(time.monotonic() - self.started, 3)


# on_phase(plan, phase, old, new): a rollout reached `phase` (_journal.WORKING_PHASES) for plan.service; the run
# records it before it goes on (docs/state-machine.md).
PhaseHook = t.Callable[[ServicePlan, str, list[Container], list[Container]], None]


__all__ = [
    "WATCH_INTERVAL_S",
    "BadRequest",
    "ComposeService",
    "Container",
    "PhaseHook",
    "Run",
    "ServicePlan",
    "Settings",
    "UndoIncomplete",
    "UpgradeError",
]
