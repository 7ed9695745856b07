# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""What Docker knows during a rolling upgrade: a service's containers, images and digests, and removing containers.

Private to this collection: not a public API, it may change in any release.

Every Engine call goes through the one client (module_utils/_docker.py); which containers belong to a service and
which host port they publish comes from module_utils/_compose.py, as for the upstream renderer and the journal.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import calendar
import re
import time
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._compose import (
    LOOPBACK,
    container_name,
    container_number,
    list_project_containers,
    published_port,
)
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient, DockerError, DockerNotFound
from ansible_collections.opsbook.stack.plugins.module_utils._probes import ContainerProbe, check_container
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.compose_file import split_image
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import Container, UpgradeError
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import container_address

REGISTRY_TIMEOUT_S = 20.0
_DOCKER_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def parse_docker_time(value: str | None) -> float | None:
    """Docker's RFC 3339 time with nanoseconds -> unix time (None when missing or zero)."""
    if not value or value.startswith("0001-"):
        return None
    match = _DOCKER_TIME_RE.match(value)
    if not match:
        return None
    base = calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S"))
    fraction = float("0" + match.group(2)) if match.group(2) else 0.0
    zone = match.group(3)
    offset = 0
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return base + fraction - offset


def digest_of(image: dict[str, t.Any] | None, ref: str) -> str:
    """The repo digest of an inspected image for ref's repository (else its first one; '' for none)."""
    if not image:
        return ""
    repo = split_image(ref)[0]
    for repo_digest in image.get("RepoDigests") or []:
        if repo_digest.split("@", 1)[0] == repo:
            return repo_digest
    return (image.get("RepoDigests") or [""])[0]


def _as_inspected_ports(item: dict[str, t.Any]) -> dict[str, t.Any]:
    """A container list item's `Ports` in the shape of an inspect's NetworkSettings, for _compose.published_port."""
    ports: dict[str, list[dict[str, str]]] = {}
    for binding in item.get("Ports") or []:
        if binding.get("PrivatePort") is None or not binding.get("PublicPort"):
            continue
        key = "%d/%s" % (binding["PrivatePort"], binding.get("Type") or "tcp")
        ports.setdefault(key, []).append({"HostIp": binding.get("IP") or "", "HostPort": str(binding["PublicPort"])})
    return {"NetworkSettings": {"Ports": ports}}


def to_container(item: dict[str, t.Any], port: int | None) -> Container:
    host_port = published_port(_as_inspected_ports(item), port, LOOPBACK)[0] if port is not None else None
    return Container(
        id=item["Id"],
        name=container_name(item) or "?",
        image_id=item.get("ImageID", ""),
        state=item.get("State", ""),
        number=container_number(item.get("Labels")),
        created=float(item.get("Created", 0)),
        host_port=host_port,
        endpoint=container_address(item, port)[0] if port is not None else "",
    )


class DockerFacts:
    """The containers and images of one project, through the Engine client."""

    def __init__(self, client: DockerClient, project: str):
        self.client = client
        self.project = project

    def containers(self, service: str, port: int | None = None) -> list[Container]:
        """The service's containers (one-offs left out), oldest first, with the host port of `port`."""
        items = list_project_containers(self.client, self.project, service, all=True)
        return sorted((to_container(item, port) for item in items), key=lambda c: (c.created, c.number))

    def image(self, ref: str) -> dict[str, t.Any] | None:
        try:
            return self.client.inspect_image(ref)
        except DockerNotFound:
            return None

    def registry_digest(self, ref: str) -> str:
        """The digest the registry has for ref, without pulling (check mode); '' when it cannot be asked."""
        try:
            data = self.client.inspect_distribution(ref, timeout=REGISTRY_TIMEOUT_S)
        except DockerError:
            return ""
        digest = (data.get("Descriptor") or {}).get("digest", "")
        return "%s@%s" % (split_image(ref)[0], digest) if digest else ""

    def pull(self, ref: str) -> None:
        repo, tag = split_image(ref)
        try:
            if tag:
                self.client.pull_image(repo, tag)
            else:
                self.client.pull_image(ref)
        except DockerError as exc:
            message = str(exc)
            if not message.startswith("cannot pull"):
                message = "cannot pull %s: %s" % (ref, message)
            raise UpgradeError(message) from exc

    def inspect(self, container_id: str) -> dict[str, t.Any] | None:
        try:
            return self.client.inspect_container(container_id)
        except DockerNotFound:
            return None

    def stop_and_remove(self, container: Container, grace_s: int | None = None) -> None:
        """Stop with the container's own grace period (StopTimeout, else 10 s) unless given one, then remove."""
        info = self.inspect(container.id)
        if info is None:
            return
        if grace_s is None:
            configured = (info.get("Config") or {}).get("StopTimeout")
            grace_s = int(configured) if configured is not None else 10
        try:
            self.client.stop_container(container.id, grace_s=grace_s)
        except DockerNotFound:
            return
        except DockerError:
            pass  # removed with force below
        try:
            self.client.remove_container(container.id, force=True)
        except DockerNotFound:
            pass

    def evidence(self, container: Container) -> dict[str, t.Any]:
        """Health log, log tail and state of a container, from the health_check probe code."""
        result = check_container(ContainerProbe(name=container.name, container=container.id, timeout=10), self.client)
        return {"container": container.name, "detail": result.detail, **result.evidence}


__all__ = ["DockerFacts", "digest_of", "parse_docker_time", "to_container"]
