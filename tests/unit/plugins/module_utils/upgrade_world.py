# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host described in memory for whole runs of rolling_upgrade and rollback: containers with images, health and
published ports, a real compose.yaml in a temporary directory (the real checked edit), an upstream per service,
and an access log whose answers depend on the image. The real engine and Nginx run in molecule/upgrade."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import itertools
import time
import typing as t

import yaml

from ansible_collections.opsbook.stack.plugins.module_utils._process import CommandResult
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade import (
    ComposeFile,
    ComposeService,
    Container,
    Settings,
    UpgradeError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import UpstreamError

COMPOSE = """\
name: demo
services:
  web:
    image: reg/web:1
    deploy:
      replicas: 2
    labels:
      io.opsbook.port: '8000'
  db:
    image: reg/db:1
    labels:
      io.opsbook.role: stateful
"""


class Killed(BaseException):
    """SIGKILL of the module process: nothing after it runs (not even `finally` blocks that matter here)."""


class World:
    """Docker, Compose, Nginx and the access log of one project; `faults` makes a piece fail on purpose."""

    def __init__(self, tmp_path: t.Any, compose: str = COMPOSE):
        self.dir = tmp_path
        self.path = tmp_path / "compose.yaml"
        self.path.write_text(compose)
        self.s = Settings(
            project="demo",
            project_dir=str(tmp_path),
            journal_root=str(tmp_path / "journal"),
            health_timeout_s=2,
            readiness_timeout_s=0.5,
            gate_requests=0,
            bake_s=0.05,
            bake_rate=0,
            bake_min_requests=5,
            drain_timeout_s=0,
        )
        self.items: dict[str, dict[str, t.Any]] = {}
        self.ids = itertools.count(1)
        self.ports = itertools.count(30001)
        self.upstream: dict[str, list[str]] = {}
        self.switches: list[tuple[str, list[str]]] = []
        # image ref -> how its containers behave: "ok", "unhealthy", "exits", "5xx", "crashloop"
        self.behaviour: dict[str, str] = {}
        self.faults: dict[str, t.Any] = {}
        self.kill_at: tuple[str, str] | None = None  # (service, phase): the module dies when it records it
        self.client = self
        self.compose = self
        self.docker = self
        self.traffic = self
        self.access_log = self
        self.compose_file = ComposeFile(str(self.path), self.config)
        self.lock_fd = None
        self.workers_before_switch: set[int] = set()
        for name, svc in self.config().items():
            for _n in range(svc.replicas):
                self._create(name, svc.image)
            if svc.port:
                self.sync_from_docker(name, svc.port)

    # -- compose --------------------------------------------------------------------------------------

    def config(self, compose_file: str | None = None) -> dict[str, ComposeService]:
        with open(compose_file or str(self.path), encoding="utf-8") as handle:
            doc = yaml.safe_load(handle)
        out = {}
        for name, svc in doc["services"].items():
            labels = svc.get("labels") or {}
            port = labels.get("io.opsbook.port")
            out[name] = ComposeService(
                name,
                svc.get("image", ""),
                int((svc.get("deploy") or {}).get("replicas", 1)),
                labels.get("io.opsbook.role") or ("web" if port else "worker"),
                int(port) if port else None,
                True,
            )
        return out

    def up(self, service: str, *flags: str) -> CommandResult:
        if self.faults.get("up_fails") == service:
            return CommandResult(("docker", "compose", "up"), 1, "", "Error response from daemon: boom")
        svc = self.config()[service]
        mine = [c for c in self.items.values() if c["service"] == service]
        if "--force-recreate" in flags:
            if self.faults.get("recover_up_fails") == service and svc.image in self.faults.get("recover_images", ()):
                return CommandResult(("docker", "compose", "up"), 1, "", "no space left on device")
            for c in mine:
                del self.items[c["id"]]
            for _n in range(svc.replicas):
                self._create(service, svc.image)
        else:
            scale = int(flags[flags.index("--scale") + 1].split("=")[1])
            for _n in range(scale - len([c for c in mine if c["state"] == "running"])):
                self._create(service, svc.image)
        return CommandResult(("docker", "compose", "up"), 0, "", "")

    def _create(self, service: str, image: str) -> dict[str, t.Any]:
        n = next(self.ids)
        behaviour = self.behaviour.get(image, "ok")
        item = {
            "id": "c%02d" % n,
            "name": "demo-%s-%d" % (service, n),
            "service": service,
            "image": image,
            "image_id": "sha256:" + image.replace(":", "-").replace("/", "-"),
            "state": "exited" if behaviour == "exits" else "running",
            "created": time.time() + n / 1000.0,  # unix seconds, as Docker's list says
            "port": next(self.ports),
            "health": "unhealthy" if behaviour == "unhealthy" else "healthy",
            "restarts": 2 if behaviour == "crashloop" else 0,
        }
        self.items[item["id"]] = item
        return item

    # -- docker facts ---------------------------------------------------------------------------------

    def containers(self, service: str, port: int | None = None) -> list[Container]:
        mine = [c for c in self.items.values() if c["service"] == service]
        return [
            Container(c["id"], c["name"], c["image_id"], c["state"], 1, c["created"], c["port"] if port else None)
            for c in sorted(mine, key=lambda c: c["created"])
        ]

    def image(self, ref: str) -> dict[str, t.Any] | None:
        if ref.startswith("sha256:"):
            return {"Id": ref, "RepoDigests": []}
        if ref in self.faults.get("missing_images", ()):
            return None
        return {"Id": "sha256:" + ref.replace(":", "-").replace("/", "-"), "RepoDigests": []}

    def registry_digest(self, ref: str) -> str:
        return ""

    def pull(self, ref: str) -> None:
        raise UpgradeError("cannot pull %s: manifest for %s not found: manifest unknown" % (ref, ref))

    def inspect(self, container_id: str) -> dict[str, t.Any] | None:
        c = self.items.get(container_id)
        if c is None:
            return None
        return {
            "State": {
                "Status": c["state"],
                "Running": c["state"] == "running",
                "Restarting": False,
                "ExitCode": 1 if c["state"] == "exited" else 0,
                "Health": {"Status": c["health"], "Log": []},
            },
            "RestartCount": c["restarts"],
            "Config": {},
        }

    def stop_and_remove(self, container: Container, grace_s: int | None = None) -> None:
        if self.faults.get("remove_fails"):
            raise UpgradeError("cannot remove %s: the engine is gone" % container.name)
        self.items.pop(container.id, None)

    def evidence(self, container: Container) -> dict[str, t.Any]:
        return {"container": container.name}

    # -- project_images (the journal's view) ---------------------------------------------------------

    def list_containers(self, labels: t.Any = None, all: bool = False) -> list[dict[str, t.Any]]:  # pylint: disable=redefined-builtin
        return [
            {
                "Id": c["id"],
                "Image": c["image"],
                "ImageID": c["image_id"],
                "State": c["state"],
                "Created": c["created"],
                "Labels": {"com.docker.compose.service": c["service"], "com.docker.compose.project": "demo"},
            }
            for c in self.items.values()
            if all or c["state"] == "running"
        ]

    def inspect_image(self, ref: str) -> dict[str, t.Any]:
        return {"Id": ref, "RepoDigests": []}

    # -- traffic --------------------------------------------------------------------------------------

    def address(self, c: dict[str, t.Any]) -> str:
        return "127.0.0.1:%d" % c["port"]

    def serving(self, service: str) -> list[str]:
        return list(self.upstream.get(service, []))

    def switch(self, service: str, servers: t.Any) -> None:
        addresses = [s.address for s in servers]
        fail = self.faults.get("switch_fails")
        if fail and fail(len(self.switches), addresses):
            raise UpstreamError("nginx -t failed: [emerg] host not found in upstream")
        self.switches.append((service, addresses))
        self.upstream[service] = addresses

    def sync_from_docker(self, service: str, port: int | None) -> bool:
        healthy = [
            self.address(c)
            for c in sorted(self.items.values(), key=lambda c: c["created"])
            if c["service"] == service and c["state"] == "running" and c["health"] == "healthy"
        ]
        changed = healthy != self.upstream.get(service)
        self.upstream[service] = healthy
        return changed

    def open_gate(self, service: str, servers: t.Any) -> float:
        return 0.0  # settled at once: no worker holds an older answer here

    def close_gate(self, service: str) -> None:
        if self.faults.get("close_gate_fails"):
            raise OSError("cannot remove the gate file")

    # -- the access log: answers from the containers the upstream lists --------------------------------

    def offset(self) -> int:
        return 0

    def samples(self, offset: int, addresses: set[str]) -> tuple[list[dict[str, t.Any]], list[str]]:
        out = []
        for c in self.items.values():
            if self.address(c) in addresses:
                status = 500 if self.behaviour.get(c["image"]) == "5xx" else 200
                out.extend([{"status": status, "ms": 5.0}] * 10)
        return out, [str(s) for s in out if s["status"] >= 500][:5]

    # -- what an operator checks ----------------------------------------------------------------------

    def running_images(self, service: str) -> list[str]:
        return sorted(c["image"] for c in self.items.values() if c["service"] == service and c["state"] == "running")

    def compose_image(self, service: str) -> str:
        return self.config()[service].image

    def consistent(self, service: str = "web") -> bool:
        """compose.yaml == what runs, no leftovers, the upstream lists exactly the running containers."""
        svc = self.config()[service]
        mine = [c for c in self.items.values() if c["service"] == service]
        ok = len(mine) == svc.replicas and all(c["state"] == "running" and c["image"] == svc.image for c in mine)
        if svc.port:
            ok = ok and sorted(self.upstream.get(service, [])) == sorted(self.address(c) for c in mine)
        return ok


__all__ = ["COMPOSE", "Killed", "World"]
