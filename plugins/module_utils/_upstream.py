# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The Nginx upstream of a Compose service, rendered from Docker's state and activated safely.

Private to this collection: not a public API, it may change in any release.

docs/architecture.md "Contracts": stateless web services publish each container on 127.0.0.1 with an ephemeral
host port; the Nginx upstream file of a service lists the ports of its healthy containers. This module is the one
place that renders that file, so the nginx role and the upgrade/rollback modules write the same thing:

- ``discover_servers`` asks the Docker Engine for the containers of a project's service (``_compose``: labels,
  the one health verdict, the published loopback port) and keeps the healthy ones;
- ``render_upstream`` turns a list of servers (discovered, or given explicitly with weights for a canary)
  into an ``upstream`` block, in a deterministic order so that the same state renders the same bytes;
- ``sync_upstream`` renders and activates, and refuses to write an upstream without servers.

Activation (write, ``nginx -t``, reload, put the previous file back) is the one in ``_nginx``; ``activate``,
``NginxControl`` and the nginx errors are re-exported here for the callers that import them from this module.
Standard library only: target hosts have neither the docker SDK nor anything else beyond python3.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import ipaddress
import os
import re
import typing as t
from dataclasses import asdict, dataclass, field

from ansible_collections.opsbook.stack.plugins.module_utils._compose import (
    LABEL_NUMBER,
    LABEL_ONEOFF,
    LABEL_PROJECT,
    LABEL_SERVICE,
    LOOPBACK,
    NAME_RE,
    WILDCARD_IPS,
    container_name,
    health_verdict,
    list_project_containers,
    published_port,
)
from ansible_collections.opsbook.stack.plugins.module_utils._docker import (
    DEFAULT_DOCKER_HOST,
    DockerClient,
    DockerError,
    DockerNotFound,
)
from ansible_collections.opsbook.stack.plugins.module_utils._files import read_text
from ansible_collections.opsbook.stack.plugins.module_utils._nginx import (
    DEFAULT_LOCK_PATH,
    DEFAULT_LOCK_WAIT_S,
    DEFAULT_NGINX_BINARY,
    DEFAULT_NGINX_UNIT,
    DEFAULT_PID_FILE,
    ActivationResult,
    NginxConfigRejected,
    NginxControl,
    NginxError,
    NginxReloadFailed,
    activate,
    nginx_error_line,
)
from ansible_collections.opsbook.stack.plugins.module_utils._process import (
    DEFAULT_TIMEOUT_S,
    CommandResult,
    Runner,
    run_command,
)

# Where upstream files live. The nginx role's nginx.conf includes upstreams.d/*.conf from its http block.
DEFAULT_UPSTREAM_DIR = "/etc/nginx/upstreams.d"
DEFAULT_KEEPALIVE = 32
DEFAULT_ZONE_SIZE = "64k"
DEFAULT_HOST_IP = LOOPBACK
COMMAND_TIMEOUT_S = DEFAULT_TIMEOUT_S

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_SIZE_RE = re.compile(r"^[0-9]+[kKmM]?$")
_TIME_RE = re.compile(r"^[0-9]+(ms|s|m|h|d)?$")
# The two comment lines render_upstream puts above the block: a new header alone is no reason to rewrite.
_HEADER_PREFIX = "# "


# Every failure of an upstream write is an UpstreamError, the nginx activation's own failures included
# (NginxConfigRejected, NginxReloadFailed, NginxBusy): callers catch this one class.
UpstreamError = NginxError


class UpstreamConfigError(UpstreamError, ValueError):
    """The request itself is wrong: a bad name, address, weight, or a missing container port."""


class NoHealthyServers(UpstreamError):
    """No container of the service is running and healthy: the old upstream file is kept."""


# --------------------------------------------------------------------------------------------------------
# The data
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """One `server` line of an upstream block."""

    address: str
    weight: int | None = None
    max_fails: int | None = None
    fail_timeout: str | None = None
    backup: bool = False
    # Who is behind the address (container name), written as a comment for the person reading the file.
    comment: str = ""

    def sort_key(self) -> tuple[t.Any, ...]:
        """Numeric order of address, then port: 127.0.0.1:9000 before 127.0.0.1:10000."""
        if self.address.startswith("unix:"):
            return (2, self.address, 0)
        host, _sep, port = self.address.rpartition(":")
        host = host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
            return (0, (ip.version, int(ip)), int(port))
        except ValueError:
            return (1, host, int(port))

    def directive(self) -> str:
        parts = ["server", self.address]
        if self.weight is not None:
            parts.append("weight=%d" % self.weight)
        if self.max_fails is not None:
            parts.append("max_fails=%d" % self.max_fails)
        if self.fail_timeout is not None:
            parts.append("fail_timeout=%s" % self.fail_timeout)
        if self.backup:
            parts.append("backup")
        line = " ".join(parts) + ";"
        if self.comment:
            line += "  # " + self.comment
        return line


@dataclass(frozen=True)
class Upstream:
    """An upstream block: its name, servers, keepalive pool and shared-memory zone."""

    name: str
    servers: tuple[Server, ...]
    keepalive: int = DEFAULT_KEEPALIVE
    zone_size: str = DEFAULT_ZONE_SIZE
    # Where the servers came from, for the header comment: 'Compose service "backend" of project "demo"'.
    source: str = ""


@dataclass(frozen=True)
class SkippedContainer:
    """A container of the service that is not in the upstream, and why."""

    name: str
    state: str
    health: str | None
    reason: str


@dataclass
class Discovery:
    servers: list[Server] = field(default_factory=list)
    skipped: list[SkippedContainer] = field(default_factory=list)


@dataclass
class SyncResult:
    name: str
    path: str
    changed: bool
    content: str
    previous: str | None
    servers: list[Server]
    skipped: list[SkippedContainer]
    reloaded: bool = False
    reload_command: list[str] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, t.Any]:
        return {
            "upstream": self.name,
            "path": self.path,
            "changed": self.changed,
            "content": self.content,
            "servers": [asdict(s) for s in self.servers],
            "skipped": [asdict(s) for s in self.skipped],
            "reloaded": self.reloaded,
            "reload_command": self.reload_command,
            "note": self.note,
        }


# --------------------------------------------------------------------------------------------------------
# Names and validation
# --------------------------------------------------------------------------------------------------------


def upstream_name(project: str, service: str) -> str:
    """`<project>_<service>`: the upstream name both the role's site and the upgrade modules use."""
    for what, value in (("project", project), ("service", service)):
        if not value or not NAME_RE.match(value):
            raise UpstreamConfigError(
                "%s %r is not a valid Compose %s name (letters, digits, '_', '.', '-')" % (what, value, what)
            )
    return "%s_%s" % (project, service)


def upstream_file_for(name: str, directory: str = DEFAULT_UPSTREAM_DIR) -> str:
    """Path of the upstream file of an upstream name: <directory>/<name>.conf."""
    validate_name(name)
    return os.path.join(directory, name + ".conf")


def validate_name(name: str) -> None:
    if not name or not NAME_RE.match(name):
        raise UpstreamConfigError(
            "upstream name %r is not valid: use letters, digits, '_', '.' and '-', starting with a letter or digit"
            % (name,)
        )


def validate_address(address: str) -> None:
    """host:port (IPv4, [IPv6] or a host name) or unix:/path; nothing nginx could read as more directives."""
    if address.startswith("unix:/"):
        if re.search(r"[\s;{}#]", address):
            raise UpstreamConfigError("server address %r contains characters nginx cannot take" % address)
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UpstreamConfigError("server address %r is not host:port with a port from 1 to 65535" % address)
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise UpstreamConfigError("server address %r: not an IPv6 address (%s)" % (address, exc)) from exc
        return
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _HOSTNAME_RE.match(host):
            raise UpstreamConfigError(
                "server address %r: %r is neither an IPv4 address, a [IPv6] address nor a host name" % (address, host)
            ) from None


def validate_server(server: Server) -> None:
    validate_address(server.address)
    if server.weight is not None and server.weight < 1:
        raise UpstreamConfigError("server %s: weight must be 1 or more, got %d" % (server.address, server.weight))
    if server.max_fails is not None and server.max_fails < 0:
        raise UpstreamConfigError("server %s: max_fails must be 0 or more" % server.address)
    if server.fail_timeout is not None and not _TIME_RE.match(server.fail_timeout):
        raise UpstreamConfigError(
            "server %s: fail_timeout %r is not an nginx time such as 10s" % (server.address, server.fail_timeout)
        )
    if "\n" in server.comment:
        raise UpstreamConfigError("server %s: a comment must be one line" % server.address)


def validate_upstream(upstream: Upstream) -> None:
    validate_name(upstream.name)
    if not upstream.servers:
        raise NoHealthyServers(
            "upstream %s has no server: nginx would reject it, and it would serve nothing" % upstream.name
        )
    seen: set[str] = set()
    for server in upstream.servers:
        validate_server(server)
        if server.address in seen:
            raise UpstreamConfigError("upstream %s lists %s twice" % (upstream.name, server.address))
        seen.add(server.address)
    if upstream.keepalive < 0:
        raise UpstreamConfigError("keepalive must be 0 (off) or more, got %d" % upstream.keepalive)
    if not _SIZE_RE.match(upstream.zone_size):
        raise UpstreamConfigError("zone size %r is not an nginx size such as 64k" % upstream.zone_size)
    if all(server.backup for server in upstream.servers):
        raise UpstreamConfigError("upstream %s has only backup servers" % upstream.name)


# --------------------------------------------------------------------------------------------------------
# Docker's state
# --------------------------------------------------------------------------------------------------------


def discover_servers(
    client: DockerClient,
    project: str,
    service: str,
    port: int | None = None,
    host_ip: str = DEFAULT_HOST_IP,
    weights: dict[str, int] | None = None,
) -> Discovery:
    """The servers of a Compose service: its running and healthy containers' published host ports.

    A container without a healthcheck counts as healthy while it runs. `weights` maps container names to a
    weight (a canary). The servers come back sorted by address; `skipped` says why each other container is out.
    """
    upstream_name(project, service)  # validates both names
    found = Discovery()
    for item in list_project_containers(client, project, service, all=True):
        try:
            info = client.inspect_container(item["Id"])
        except DockerNotFound:
            continue  # removed between list and inspect
        name = container_name(info)
        verdict = health_verdict(info)
        reason = verdict.reason
        host_port = None
        if verdict.ok:
            host_port, reason = published_port(info, port, host_ip)
        if reason or host_port is None:
            found.skipped.append(SkippedContainer(name, verdict.state, verdict.health, reason))
            continue
        weight = (weights or {}).get(name)
        address = "%s:%d" % (host_ip if host_ip not in WILDCARD_IPS else DEFAULT_HOST_IP, host_port)
        found.servers.append(Server(address=address, weight=weight, comment=name))
    found.servers.sort(key=Server.sort_key)
    return found


# --------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------


def render_upstream(upstream: Upstream) -> str:
    """The upstream file: same input, same bytes (servers sorted by address, no timestamps)."""
    validate_upstream(upstream)
    source = upstream.source or "the servers given to opsbook.stack"
    lines = [
        "# Managed by opsbook.stack (module_utils/_upstream.py): %s." % source,
        "# Rendered from Docker's state and checked with nginx -t; edits here are overwritten.",
        "upstream %s {" % upstream.name,
        # A shared zone: every worker sees the same server states (max_fails) and weights.
        "    zone %s %s;" % (upstream.name, upstream.zone_size),
    ]
    lines += ["    " + server.directive() for server in sorted(upstream.servers, key=Server.sort_key)]
    if upstream.keepalive:
        lines.append("    keepalive %d;" % upstream.keepalive)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _body(text: str) -> str:
    """The file without the comment lines above the upstream block."""
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith(_HEADER_PREFIX):
        lines.pop(0)
    return "".join(lines)


def keep_if_same_block(path: str, content: str) -> str:
    """content, or the file's current text when the two differ only in the header comment."""
    previous = read_text(path)
    if previous is not None and previous != content and _body(previous) == _body(content):
        return previous
    return content


# --------------------------------------------------------------------------------------------------------
# The one call the role and the upgrade modules make
# --------------------------------------------------------------------------------------------------------


def sync_upstream(
    project: str | None = None,
    service: str | None = None,
    *,
    name: str | None = None,
    port: int | None = None,
    servers: t.Sequence[Server] | None = None,
    weights: dict[str, int] | None = None,
    directory: str = DEFAULT_UPSTREAM_DIR,
    keepalive: int = DEFAULT_KEEPALIVE,
    zone_size: str = DEFAULT_ZONE_SIZE,
    host_ip: str = DEFAULT_HOST_IP,
    docker: DockerClient | None = None,
    docker_host: str = DEFAULT_DOCKER_HOST,
    nginx: NginxControl | None = None,
    check_mode: bool = False,
    reload: bool = True,
    lock_path: str | None = DEFAULT_LOCK_PATH,
    lock_wait_s: float | None = DEFAULT_LOCK_WAIT_S,
) -> SyncResult:
    """Render the upstream of a Compose service (or of explicit servers) and activate it safely.

    Without `servers` the servers are the service's healthy containers as Docker reports them. With
    `servers` (a canary with weights, or the app hosts behind an edge Nginx) those are written as given.
    No server at all raises NoHealthyServers and leaves the existing file alone.
    """
    if name is None:
        if not (project and service):
            raise UpstreamConfigError("give either project and service, or an upstream name")
        name = upstream_name(project, service)
    validate_name(name)
    path = upstream_file_for(name, directory)
    skipped: list[SkippedContainer] = []
    if servers is None:
        if not (project and service):
            raise UpstreamConfigError("upstream %s: without explicit servers, project and service are required" % name)
        try:
            found = discover_servers(docker or DockerClient(docker_host), project, service, port, host_ip, weights)
        except DockerError as exc:
            raise UpstreamError(
                "cannot ask Docker for the containers of %s/%s: %s" % (project, service, exc),
                {"project": project, "service": service},
            ) from exc
        chosen, skipped = found.servers, found.skipped
        source = 'the healthy containers of Compose service "%s" of project "%s"' % (service, project)
    else:
        chosen = list(servers)
        source = "servers given explicitly" + (
            ' for service "%s" of project "%s"' % (service, project) if project and service else ""
        )
    if not chosen:
        why = "; ".join("%s: %s" % (s.name, s.reason) for s in skipped) or "no container of the service exists"
        raise NoHealthyServers(
            "no healthy container for upstream %s (%s); %s was left as it is, nginx keeps the servers it has. "
            "Check `docker compose ps` for the service." % (name, why, path),
            {"path": path, "skipped": [asdict(s) for s in skipped]},
        )
    content = render_upstream(Upstream(name, tuple(chosen), keepalive, zone_size, source))
    # The same servers from another source (the final re-read from Docker after an explicit switch): keep the file.
    content = keep_if_same_block(path, content)
    if not check_mode:
        os.makedirs(directory, exist_ok=True)
    done = activate(
        path, content, nginx=nginx, check_mode=check_mode, reload=reload, lock_path=lock_path, lock_wait_s=lock_wait_s
    )
    return SyncResult(
        name,
        path,
        done.changed,
        content,
        done.previous,
        sorted(chosen, key=Server.sort_key),
        skipped,
        done.reloaded,
        done.reload_command,
        done.note,
    )


def remove_upstream(
    name: str,
    directory: str = DEFAULT_UPSTREAM_DIR,
    nginx: NginxControl | None = None,
    check_mode: bool = False,
    reload: bool = True,
    lock_path: str | None = DEFAULT_LOCK_PATH,
    lock_wait_s: float | None = DEFAULT_LOCK_WAIT_S,
) -> ActivationResult:
    """Remove an upstream file with the same safety (a site still using it makes nginx -t fail: it comes back)."""
    return activate(
        upstream_file_for(name, directory),
        None,
        nginx=nginx,
        check_mode=check_mode,
        reload=reload,
        lock_path=lock_path,
        lock_wait_s=lock_wait_s,
    )


__all__ = [
    "COMMAND_TIMEOUT_S",
    "DEFAULT_HOST_IP",
    "DEFAULT_KEEPALIVE",
    "DEFAULT_LOCK_PATH",
    "DEFAULT_NGINX_BINARY",
    "DEFAULT_NGINX_UNIT",
    "DEFAULT_PID_FILE",
    "DEFAULT_UPSTREAM_DIR",
    "DEFAULT_ZONE_SIZE",
    "LABEL_NUMBER",
    "LABEL_ONEOFF",
    "LABEL_PROJECT",
    "LABEL_SERVICE",
    "ActivationResult",
    "CommandResult",
    "Discovery",
    "NginxConfigRejected",
    "NginxControl",
    "NginxReloadFailed",
    "NoHealthyServers",
    "Runner",
    "Server",
    "SkippedContainer",
    "SyncResult",
    "Upstream",
    "UpstreamConfigError",
    "UpstreamError",
    "activate",
    "discover_servers",
    "keep_if_same_block",
    "nginx_error_line",
    "read_text",
    "remove_upstream",
    "render_upstream",
    "run_command",
    "sync_upstream",
    "upstream_file_for",
    "upstream_name",
]
