# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Compose as Docker sees it: the labels, the name rules, a project's containers, the one health verdict.

Private to this collection: not a public API, it may change in any release.

Every reader of "which containers does this service have, are they healthy, which port do they publish"
(the upstream renderer, the upgrade modules, compose_diagnose, the release journal, the probes) asks here, so
they cannot disagree about a container that is starting, restarting or a `docker compose run` one-off.
Standard library and _files only.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import hashlib
import os
import re
import typing as t
from dataclasses import dataclass

from ansible_collections.opsbook.stack.plugins.module_utils._files import sha256_file

LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
LABEL_ONEOFF = "com.docker.compose.oneoff"
LABEL_NUMBER = "com.docker.compose.container-number"

# Compose project and service names (and everything derived from them: upstream names, journal directories).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
WILDCARD_IPS = ("0.0.0.0", "", "::")
LOOPBACK = "127.0.0.1"

# The health verdicts.
HEALTHY = "healthy"
STARTING = "starting"
UNHEALTHY = "unhealthy"
NOT_RUNNING = "not_running"


def valid_name(name: t.Any) -> bool:
    return isinstance(name, str) and bool(NAME_RE.match(name))


def is_oneoff(labels: dict[str, str] | None) -> bool:
    """A `docker compose run` container: not part of its service."""
    return (labels or {}).get(LABEL_ONEOFF, "False") == "True"


def container_number(labels: dict[str, str] | None) -> int:
    try:
        return int((labels or {}).get(LABEL_NUMBER, "0"))
    except ValueError:
        return 0


def container_labels(info: dict[str, t.Any]) -> dict[str, str]:
    """Labels of a container from either an inspect (Config.Labels) or a list item (Labels)."""
    return info.get("Labels") or (info.get("Config") or {}).get("Labels") or {}


# An adopted project (the compose_app role with compose_app_compose_files) runs the operator's own files with the
# collection's override last; the project's .env names them in COMPOSE_FILE, which `docker compose` run by hand in
# the project directory reads too. A rendered project has no COMPOSE_FILE: compose.yaml alone.
ENV_FILE = ".env"
COMPOSE_FILE_VAR = "COMPOSE_FILE"


def project_compose_files(project_dir: str, compose_file: str = "") -> list[str]:
    """The project's compose files in `-f` order, the file the collection edits (compose_file, by default
    <project_dir>/compose.yaml) last: COMPOSE_FILE of the project's .env before it, else that file alone."""
    edited = compose_file or os.path.join(project_dir, "compose.yaml")
    listed: list[str] = []
    separator = ":"
    try:
        with open(os.path.join(project_dir, ENV_FILE), encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, sep, value = line.strip().partition("=")
        value = value.strip().strip("'\"")
        if sep and key.strip() == "COMPOSE_PATH_SEPARATOR" and value:
            separator = value
        elif sep and key.strip() == COMPOSE_FILE_VAR:
            listed = [value]
    listed = [part for entry in listed for part in entry.split(separator) if part]
    files = [os.path.normpath(os.path.join(project_dir, f)) for f in listed]
    base = [f for f in files if f != os.path.normpath(edited)]
    return base + [edited]


def compose_files_hash(files: list[str]) -> str:
    """The journal's compose_hash: the sha256 of the one file, or of every file's name and sha256 in order."""
    digests = [(os.path.basename(path), sha256_file(path)) for path in files]
    if len(digests) == 1:
        return digests[0][1]
    return hashlib.sha256("".join("%s %s\n" % pair for pair in digests).encode("utf-8")).hexdigest()


def container_name(info: dict[str, t.Any]) -> str:
    name = info.get("Name") or (info.get("Names") or [""])[0] or str(info.get("Id", ""))[:12]
    return name.lstrip("/")


def docker_health(info: dict[str, t.Any]) -> str | None:
    """Docker's own health status of an inspected container (None: it has no healthcheck)."""
    health = (info.get("State") or {}).get("Health")
    return health.get("Status") if health else None


@dataclass
class Verdict:
    """The one answer to "can this container take traffic?"."""

    status: str  # HEALTHY, STARTING, UNHEALTHY or NOT_RUNNING
    reason: str  # empty when healthy
    state: str  # Docker's State.Status
    health: str | None  # Docker's health status, None without a healthcheck

    @property
    def ok(self) -> bool:
        return self.status == HEALTHY


def health_verdict(info: dict[str, t.Any]) -> Verdict:
    """Healthy means running, not restarting or paused, and healthy by its healthcheck (or without one)."""
    state = info.get("State") or {}
    status = state.get("Status") or ("running" if state.get("Running") else "unknown")
    health = docker_health(info)
    if status != "running" or state.get("Restarting") or state.get("Paused"):
        return Verdict(NOT_RUNNING, "not running (%s)" % status, status, health)
    if health in (None, "none", HEALTHY):
        return Verdict(HEALTHY, "", status, health)
    if health == STARTING:
        return Verdict(STARTING, "health is starting", status, health)
    return Verdict(UNHEALTHY, "health is %s" % health, status, health)


def published_port(
    info: dict[str, t.Any], container_port: int | None, host_ip: str = LOOPBACK
) -> tuple[int | None, str]:
    """The host port published for container_port on host_ip (or on every interface); (None, reason) if none.

    container_port None: the container's only published TCP port.
    """
    ports: dict[str, t.Any] = (info.get("NetworkSettings") or {}).get("Ports") or {}
    if container_port is None:
        published = sorted(key for key, bindings in ports.items() if bindings and key.endswith("/tcp"))
        if len(published) != 1:
            return None, ("publishes %s: set the container port" % (", ".join(published) or "no TCP port"))
        key = published[0]
    else:
        key = "%d/tcp" % container_port
    bindings = ports.get(key) or []
    if not bindings:
        return None, "container port %s is not published" % key
    exact = [b for b in bindings if b.get("HostIp") == host_ip]
    wildcard = [b for b in bindings if b.get("HostIp") in WILDCARD_IPS]
    chosen = (exact or wildcard or [None])[0]
    if chosen is None:
        where = ", ".join("%s:%s" % (b.get("HostIp"), b.get("HostPort")) for b in bindings)
        return None, "container port %s is published on %s, not on %s" % (key, where, host_ip)
    try:
        return int(chosen["HostPort"]), ""
    except (KeyError, TypeError, ValueError):
        return None, "container port %s has no host port yet" % key


def project_filter(project: str, service: str | None = None) -> dict[str, str | None]:
    labels: dict[str, str | None] = {LABEL_PROJECT: project}
    if service is not None:
        labels[LABEL_SERVICE] = service
    return labels


def list_project_containers(
    client: t.Any,
    project: str,
    service: str | None = None,
    all: bool = True,
) -> list[dict[str, t.Any]]:  # pylint: disable=redefined-builtin
    """The list items of a project's (or one service's) containers, one-offs left out, in Compose's order."""
    items = client.list_containers(labels=project_filter(project, service), all=all)
    kept = [item for item in items if not is_oneoff(item.get("Labels"))]
    return sorted(kept, key=lambda item: (container_number(item.get("Labels")), container_name(item)))


__all__ = [
    "COMPOSE_FILE_VAR",
    "ENV_FILE",
    "HEALTHY",
    "LABEL_NUMBER",
    "LABEL_ONEOFF",
    "LABEL_PROJECT",
    "LABEL_SERVICE",
    "LOOPBACK",
    "NAME_RE",
    "NOT_RUNNING",
    "STARTING",
    "UNHEALTHY",
    "WILDCARD_IPS",
    "Verdict",
    "compose_files_hash",
    "container_labels",
    "container_name",
    "container_number",
    "docker_health",
    "health_verdict",
    "is_oneoff",
    "list_project_containers",
    "project_compose_files",
    "project_filter",
    "published_port",
    "valid_name",
]
