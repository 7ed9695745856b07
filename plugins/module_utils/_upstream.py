# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Which containers serve a Compose service, and the file that tells Nginx: rendered from Docker's state.

Private to this collection: not a public API, it may change in any release.

docs/routing.md: Nginx reaches a web service by name (``<project>_<service>.opsbook.internal``) through its
``resolver``, a local dnsmasq that serves a hosts file per service with the bridge addresses of the service's
healthy containers. Changing where a service's traffic goes is an atomic write of that file: no Nginx reload, so
no keep-alive client connection is ever closed by a switch. This module is the one place that says which
containers serve a service and renders that file, so the nginx role, the routing watcher and the upgrade and
rollback modules write the same thing:

- ``discover_servers`` asks the Docker Engine for the containers of a project's service (``_compose``: labels,
  the one health verdict) and keeps the healthy ones, as ``<container ip>:<container port>``;
- ``render_hosts`` turns those servers into the service's hosts file (sorted, no timestamps: the same state
  renders the same bytes); ``sync_upstream`` writes it atomically under its lock, never with no server at all;
- explicit servers under an upstream name (the app hosts behind an edge Nginx) are still an ``upstream`` block
  (``render_upstream``), activated by the one Nginx activation of ``_nginx`` (``nginx -t``, reload, put the
  previous file back), since they change only when a converge changes them.

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
    container_name,
    health_verdict,
    list_project_containers,
)
from ansible_collections.opsbook.stack.plugins.module_utils._docker import (
    DEFAULT_DOCKER_HOST,
    DockerClient,
    DockerError,
    DockerNotFound,
)
from ansible_collections.opsbook.stack.plugins.module_utils._files import flock, read_text, write_atomic
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
# The hosts files of the services live in this subdirectory of the upstream directory, which the resolver
# (dnsmasq --hostsdir) watches. Files starting with "." (write_atomic's temporary files, the locks) are ignored.
HOSTS_SUBDIR = "hosts.d"
# The DNS zone of the services' names (.internal is reserved for private use).
ROUTE_ZONE = "opsbook.internal"
# Seconds Nginx keeps an answer of the resolver (its `resolver ... valid=`); a switch is complete after it.
RESOLVER_VALID_S = 1
# The label compose_app puts on web services: the container port Nginx proxies to (docs/contracts.md).
LABEL_PORT = "io.opsbook.port"
HOSTS_MODE = 0o644
DEFAULT_KEEPALIVE = 32
DEFAULT_ZONE_SIZE = "64k"
DEFAULT_HOST_IP = LOOPBACK
COMMAND_TIMEOUT_S = DEFAULT_TIMEOUT_S

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_SIZE_RE = re.compile(r"^[0-9]+[kKmM]?$")
_TIME_RE = re.compile(r"^[0-9]+(ms|s|m|h|d)?$")


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
    # Docker has sent it a stop signal (the watcher's `leaving`): it may still run, but it is on its way out.
    leaving: bool = False


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


def container_ip(info: dict[str, t.Any]) -> str:
    """The address the host reaches a container on: its IPv4 address on a bridge network ('' when none).

    Several networks: the first by name, so the choice is stable. network_mode host: the host's loopback.
    """
    if ((info.get("HostConfig") or {}).get("NetworkMode") or "") == "host":
        return LOOPBACK
    networks: dict[str, t.Any] = (info.get("NetworkSettings") or {}).get("Networks") or {}
    for name in sorted(networks):
        address = (networks[name] or {}).get("IPAddress") or ""
        if address:
            return str(address)
    return ""


def container_port_of(info: dict[str, t.Any], port: int | None) -> tuple[int | None, str]:
    """The container port Nginx proxies to: `port`, else the io.opsbook.port label, else the only published one."""
    if port is not None:
        return port, ""
    label = ((info.get("Config") or {}).get("Labels") or info.get("Labels") or {}).get(LABEL_PORT)
    if label and str(label).isdigit():
        return int(label), ""
    ports: dict[str, t.Any] = (info.get("NetworkSettings") or {}).get("Ports") or {}
    tcp = sorted(key for key in ports if key.endswith("/tcp"))
    if len(tcp) == 1:
        return int(tcp[0].split("/", 1)[0]), ""
    return None, "no %s label and %s: set the container port" % (LABEL_PORT, ", ".join(tcp) or "no TCP port")


def container_address(info: dict[str, t.Any], port: int | None) -> tuple[str, str]:
    """`<ip>:<container port>` of a container (inspect or list item), or ('', why not)."""
    chosen, reason = container_port_of(info, port)
    if chosen is None:
        return "", reason
    address = container_ip(info)
    if not address:
        return "", "has no IPv4 address on a bridge network"
    return "%s:%d" % (address, chosen), ""


def discover_servers(
    client: DockerClient,
    project: str,
    service: str,
    port: int | None = None,
    host_ip: str = DEFAULT_HOST_IP,
    weights: dict[str, int] | None = None,
    leaving: t.Mapping[str, str] | None = None,
) -> Discovery:
    """The servers of a Compose service: its running and healthy containers as `<bridge ip>:<container port>`.

    `leaving` maps container ids to why they are on their way out (the watcher's record of a stop signal Docker
    sent): such a container still runs and may still pass its health check, but it no longer accepts
    connections, so it is skipped.

    A container without a healthcheck counts as healthy while it runs. `weights` maps container names to a
    weight (kept on the Server; the resolver cannot express it, see render_hosts). The servers come back sorted
    by address; `skipped` says why each other container is out. `host_ip` is kept for callers of the published-
    port addressing of earlier releases and is not used.
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
        address = ""
        if verdict.ok:
            address, reason = container_address(info, port)
        why_leaving = (leaving or {}).get(str(info.get("Id") or item["Id"]), "")
        reason = reason or why_leaving
        if reason or not address:
            found.skipped.append(SkippedContainer(name, verdict.state, verdict.health, reason, bool(why_leaving)))
            continue
        found.servers.append(Server(address=address, weight=(weights or {}).get(name), comment=name))
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


def route_host(name: str) -> str:
    """The name Nginx resolves for an upstream name: `<name>.opsbook.internal`."""
    validate_name(name)
    return "%s.%s" % (name, ROUTE_ZONE)


def hosts_dir_for(upstream_dir: str = DEFAULT_UPSTREAM_DIR) -> str:
    return os.path.join(upstream_dir, HOSTS_SUBDIR)


def hosts_file_for(name: str, upstream_dir: str = DEFAULT_UPSTREAM_DIR) -> str:
    """Path of the hosts file of an upstream name: <upstream_dir>/hosts.d/<name>."""
    validate_name(name)
    return os.path.join(hosts_dir_for(upstream_dir), name)


def _hosts_lock(path: str) -> str:
    # A dot file: dnsmasq reads every other file of its directory as a hosts file.
    return os.path.join(os.path.dirname(path), ".%s.lock" % os.path.basename(path))


def _split_ip_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        host = ""
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise UpstreamConfigError(
            "server %r: a service reached through the resolver needs <IPv4 address>:<container port>" % address
        )
    return host, int(port)


def render_hosts(name: str, servers: t.Sequence[Server], allow_empty: bool = False) -> str:
    """The hosts file of an upstream name: one `<ip> <name>.opsbook.internal` line per server, sorted.

    All servers share one port (the container port, which the site's proxy_pass carries). A DNS answer has no
    weights: Nginx picks among the addresses at random, so a canary gets the share of its containers. No server
    raises NoHealthyServers unless allow_empty (the closed gate: Nginx answers 502 for the name).
    """
    host = route_host(name)
    if not servers and not allow_empty:
        raise NoHealthyServers("upstream %s has no server: Nginx would answer 502 for every request" % name)
    pairs: list[tuple[str, int, str]] = []
    for server in sorted(servers, key=Server.sort_key):
        validate_server(server)
        address, port = _split_ip_port(server.address)
        pairs.append((address, port, server.comment))
    ports = sorted({port for _a, port, _c in pairs})
    if len(ports) > 1:
        raise UpstreamConfigError(
            "upstream %s: servers on different ports %s; one container port per service"
            % (name, ", ".join(map(str, ports)))
        )
    if len({address for address, _p, _c in pairs}) != len(pairs):
        raise UpstreamConfigError("upstream %s lists an address twice" % name)
    lines = [
        "# Managed by opsbook.stack (module_utils/_upstream.py): the resolver (dnsmasq) serves these addresses",
        "# to Nginx; only healthy containers are listed. Edits here are overwritten.",
        "# port %s" % (ports[0] if ports else "-"),
    ]
    lines += ["%s %s%s" % (address, host, "  # " + comment if comment else "") for address, _p, comment in pairs]
    return "\n".join(lines) + "\n"


_HOSTS_PORT_RE = re.compile(r"^# port ([0-9]+)$", re.M)
_HOSTS_LINE_RE = re.compile(r"^([0-9.]+)\s+\S+", re.M)


def hosts_addresses(content: str | None) -> list[str]:
    """`<ip>:<port>` of each line of a hosts file that render_hosts wrote ([] for none or no file)."""
    port = _HOSTS_PORT_RE.search(content or "")
    if not port:
        return []
    return ["%s:%s" % (m.group(1), port.group(1)) for m in _HOSTS_LINE_RE.finditer(content or "")]


def write_hosts(path: str, content: str, check_mode: bool = False) -> tuple[bool, str | None]:
    """Write a hosts file atomically when its bytes change; (changed, previous). Never removes one: dnsmasq
    keeps the names of a removed file, so a name is emptied by writing a file without addresses."""
    if not check_mode:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with flock(_hosts_lock(path), "hosts file %s" % os.path.basename(path), wait_s=DEFAULT_LOCK_WAIT_S):
        previous = read_text(path)
        if previous == content:
            return False, previous
        if not check_mode:
            write_atomic(path, content, mode=HOSTS_MODE)
        return True, previous


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
    empty_when_none_runs: bool = False,
    leaving: t.Mapping[str, str] | None = None,
) -> SyncResult:
    """Point the upstream of a Compose service at its healthy containers (or at explicit servers).

    With project and service: the service's hosts file (<directory>/hosts.d/<name>), written atomically when it
    changes; the resolver serves it to Nginx within a second, without a reload. Without `servers` the servers
    are the service's healthy containers as Docker reports them. With only a name and `servers` (the app hosts
    behind an edge Nginx): an upstream block, activated with nginx -t and a reload. No server at all raises
    NoHealthyServers and leaves the existing file alone, except with `empty_when_none_runs` (the watcher) when
    no container of the service runs at all, or every one still running has been sent a stop signal (`leaving`,
    id -> why): the addresses on file are dead or about to be (Nginx would wait out its connect timeout on each
    once they exit), so the name is emptied and Nginx answers 502 at once. Running but unhealthy containers keep
    their addresses: they may still answer, and a failing health check is not proof. Containers in `leaving` are
    left out (see discover_servers).
    """
    if name is None:
        if not (project and service):
            raise UpstreamConfigError("give either project and service, or an upstream name")
        name = upstream_name(project, service)
    validate_name(name)
    if not (project and service):
        if servers is None:
            raise UpstreamConfigError("upstream %s: without explicit servers, project and service are required" % name)
        return _sync_block(
            name, list(servers), directory, keepalive, zone_size, nginx, check_mode, reload, lock_path, lock_wait_s
        )
    path = hosts_file_for(name, directory)
    skipped: list[SkippedContainer] = []
    if servers is None:
        try:
            found = discover_servers(
                docker or DockerClient(docker_host), project, service, port, host_ip, weights, leaving
            )
        except DockerError as exc:
            raise UpstreamError(
                "cannot ask Docker for the containers of %s/%s: %s" % (project, service, exc),
                {"project": project, "service": service},
            ) from exc
        chosen, skipped = found.servers, found.skipped
    else:
        chosen = list(servers)
    if not chosen:
        why = "; ".join("%s: %s" % (s.name, s.reason) for s in skipped) or "no container of the service exists"
        if empty_when_none_runs and servers is None and all(s.state != "running" or s.leaving for s in skipped):
            content = render_hosts(name, [], allow_empty=True)
            changed, previous = write_hosts(path, content, check_mode)
            note = (
                "no container of the service runs, or every one is being stopped (%s): the name has no address, "
                "Nginx answers 502 at once" % why
            )
            return SyncResult(name, path, changed, content, previous, [], skipped, note=note)
        raise NoHealthyServers(
            "no healthy container for upstream %s (%s); %s was left as it is, Nginx keeps the servers it has. "
            "Check `docker compose ps` for the service." % (name, why, path),
            {"path": path, "skipped": [asdict(s) for s in skipped]},
        )
    content = render_hosts(name, chosen)
    changed, previous = write_hosts(path, content, check_mode)
    weighted = len({s.weight or 1 for s in chosen}) > 1
    note = "weights are not expressible through the resolver: each container gets an equal share" if weighted else ""
    return SyncResult(name, path, changed, content, previous, sorted(chosen, key=Server.sort_key), skipped, note=note)


def _sync_block(
    name: str,
    chosen: list[Server],
    directory: str,
    keepalive: int,
    zone_size: str,
    nginx: NginxControl | None,
    check_mode: bool,
    reload: bool,
    lock_path: str | None,
    lock_wait_s: float | None,
) -> SyncResult:
    """Explicit servers under an upstream name: an upstream block, through the one Nginx activation."""
    path = upstream_file_for(name, directory)
    if not chosen:
        raise NoHealthyServers("upstream %s: no server given; %s was left as it is" % (name, path), {"path": path})
    content = render_upstream(Upstream(name, tuple(chosen), keepalive, zone_size, "servers given explicitly"))
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
        [],
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


def empty_service_hosts(name: str, directory: str = DEFAULT_UPSTREAM_DIR, check_mode: bool = False) -> ActivationResult:
    """A service that is gone: its hosts file without addresses (dnsmasq keeps the names of a removed file)."""
    path = hosts_file_for(name, directory)
    if read_text(path) is None:
        return ActivationResult(path, False, "", None, note="no hosts file")
    content = render_hosts(name, [], allow_empty=True)
    changed, previous = write_hosts(path, content, check_mode)
    return ActivationResult(path, changed, content, previous)


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
    "HOSTS_SUBDIR",
    "LABEL_NUMBER",
    "LABEL_ONEOFF",
    "LABEL_PORT",
    "LABEL_PROJECT",
    "LABEL_SERVICE",
    "RESOLVER_VALID_S",
    "ROUTE_ZONE",
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
    "container_address",
    "container_ip",
    "container_port_of",
    "discover_servers",
    "empty_service_hosts",
    "hosts_addresses",
    "hosts_dir_for",
    "hosts_file_for",
    "nginx_error_line",
    "read_text",
    "remove_upstream",
    "render_hosts",
    "render_upstream",
    "route_host",
    "run_command",
    "sync_upstream",
    "upstream_file_for",
    "upstream_name",
    "write_hosts",
]
