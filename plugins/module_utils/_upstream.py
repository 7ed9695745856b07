# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The Nginx upstream of a Compose service, rendered from Docker's state and activated safely.

Private to this collection: not a public API, it may change in any release.

DESIGN.md "Contracts": stateless web services publish each container on 127.0.0.1 with an ephemeral host
port; the Nginx upstream file of a service lists the ports of its healthy containers. This module is the one
place that renders that file, so the nginx role and the upgrade/rollback modules write the same thing:

- ``discover_servers`` asks the Docker Engine for the containers of a project's service (Compose labels),
  keeps the running and healthy ones and reads their published loopback port;
- ``render_upstream`` turns a list of servers (discovered, or given explicitly with weights for a canary)
  into an ``upstream`` block, in a deterministic order so that the same state renders the same bytes;
- ``activate`` writes the file atomically beside the old one, runs ``nginx -t``, reloads gracefully, and on a
  failed test puts the previous file back and raises ``NginxConfigRejected`` with nginx's own error line;
- ``sync_upstream`` does all three and refuses to write an upstream without servers.

Standard library only: target hosts have neither the docker SDK nor anything else beyond python3.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import contextlib
import fcntl
import ipaddress
import os
import re
import subprocess
import tempfile
import typing as t
from dataclasses import asdict, dataclass, field

from ansible_collections.opsbook.stack.plugins.module_utils._docker import (
    DEFAULT_DOCKER_HOST,
    DockerClient,
    DockerError,
    DockerNotFound,
)

LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
LABEL_ONEOFF = "com.docker.compose.oneoff"
LABEL_NUMBER = "com.docker.compose.container-number"

# Where upstream files live. The nginx role's nginx.conf includes upstreams.d/*.conf from its http block.
DEFAULT_UPSTREAM_DIR = "/etc/nginx/upstreams.d"
DEFAULT_NGINX_BINARY = "nginx"
DEFAULT_NGINX_UNIT = "nginx"
DEFAULT_PID_FILE = "/run/nginx.pid"
# One lock for every writer of Nginx configuration on a host (this module, the upgrade modules): `nginx -t`
# checks the whole configuration, so two writers at once could each test the other's half-written change.
DEFAULT_LOCK_PATH = "/run/lock/opsbook-nginx.lock"
DEFAULT_KEEPALIVE = 32
DEFAULT_ZONE_SIZE = "64k"
DEFAULT_HOST_IP = "127.0.0.1"
COMMAND_TIMEOUT_S = 60.0

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_SIZE_RE = re.compile(r"^[0-9]+[kKmM]?$")
_TIME_RE = re.compile(r"^[0-9]+(ms|s|m|h|d)?$")
# Severity words nginx puts in brackets; the first such line is the one a person needs to read.
_NGINX_ERROR_RE = re.compile(r"\[(emerg|alert|crit|error)\]")
# Addresses Docker reports for a port published on every interface.
_WILDCARD_IPS = ("0.0.0.0", "", "::")


class UpstreamError(Exception):
    """Base class; ``evidence`` holds what a person on call needs to act (paths, nginx output, containers)."""

    def __init__(self, message: str, evidence: dict[str, t.Any] | None = None):
        super().__init__(message)
        self.evidence = evidence or {}


class UpstreamConfigError(UpstreamError, ValueError):
    """The request itself is wrong: a bad name, address, weight, or a missing container port."""


class NoHealthyServers(UpstreamError):
    """No container of the service is running and healthy: the old upstream file is kept."""


class NginxConfigRejected(UpstreamError):
    """`nginx -t` failed with the new file; the previous file was put back."""

    def __init__(self, message: str, nginx_error: str, evidence: dict[str, t.Any] | None = None):
        super().__init__(message, evidence)
        self.nginx_error = nginx_error


class NginxReloadFailed(UpstreamError):
    """The configuration passed `nginx -t` but the reload command failed."""


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


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return "\n".join(part for part in (self.stdout.strip(), self.stderr.strip()) if part)


Runner = t.Callable[[t.Sequence[str]], CommandResult]


def run_command(argv: t.Sequence[str], timeout: float = COMMAND_TIMEOUT_S) -> CommandResult:
    """Run argv without a shell; a missing binary or a timeout becomes rc 127 / 124 with the reason."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        return CommandResult(tuple(argv), 127, "", "%s: %s" % (argv[0], exc.strerror))
    except subprocess.TimeoutExpired:
        return CommandResult(tuple(argv), 124, "", "%s did not finish within %g s" % (" ".join(argv), timeout))
    return CommandResult(tuple(argv), proc.returncode, proc.stdout or "", proc.stderr or "")


@dataclass
class NginxControl:
    """How to test and reload the Nginx of this host. ``runner`` is replaceable for tests."""

    binary: str = DEFAULT_NGINX_BINARY
    # The main configuration file to test; None tests the one the binary was built with (/etc/nginx/nginx.conf).
    config: str | None = None
    # The reload command as argv. None: `systemctl reload nginx` under systemd, else `nginx -s reload`.
    reload_command: list[str] | None = None
    unit: str = DEFAULT_NGINX_UNIT
    pid_file: str = DEFAULT_PID_FILE
    runner: Runner = run_command
    systemd_dir: str = "/run/systemd/system"

    def test(self) -> CommandResult:
        argv = [self.binary, "-t"]
        if self.config:
            argv += ["-c", self.config]
        return self.runner(argv)

    def _under_systemd(self) -> bool:
        return os.path.isdir(self.systemd_dir)

    def is_running(self) -> bool:
        """Whether there is a running nginx to reload (a stopped one reads the new file when it starts)."""
        if self.reload_command is None and self._under_systemd():
            return self.runner(["systemctl", "is-active", "--quiet", self.unit]).rc == 0
        try:
            with open(self.pid_file, encoding="ascii") as handle:
                pid = int(handle.read().strip() or "0")
        except (OSError, ValueError):
            return False
        if pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def reload_argv(self) -> list[str]:
        if self.reload_command:
            return list(self.reload_command)
        if self._under_systemd():
            return ["systemctl", "reload", self.unit]
        return [self.binary, "-s", "reload"]

    def reload(self) -> CommandResult:
        return self.runner(self.reload_argv())


@dataclass
class ActivationResult:
    path: str
    changed: bool
    content: str
    previous: str | None
    reloaded: bool = False
    reload_command: list[str] = field(default_factory=list)
    nginx_test: str = ""
    # Why nothing was reloaded although the file changed (nginx not running, check mode).
    note: str = ""


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
        if not value or not _NAME_RE.match(value):
            raise UpstreamConfigError(
                "%s %r is not a valid Compose %s name (letters, digits, '_', '.', '-')" % (what, value, what)
            )
    return "%s_%s" % (project, service)


def upstream_file_for(name: str, directory: str = DEFAULT_UPSTREAM_DIR) -> str:
    """Path of the upstream file of an upstream name: <directory>/<name>.conf."""
    validate_name(name)
    return os.path.join(directory, name + ".conf")


def validate_name(name: str) -> None:
    if not name or not _NAME_RE.match(name):
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


def _health_of(info: dict[str, t.Any]) -> str | None:
    health = (info.get("State") or {}).get("Health")
    return health.get("Status") if health else None


def _published_port(info: dict[str, t.Any], container_port: int | None, host_ip: str) -> tuple[int | None, str]:
    """The host port published for container_port on host_ip (or on every interface); (None, reason) if none."""
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
    wildcard = [b for b in bindings if b.get("HostIp") in _WILDCARD_IPS]
    chosen = (exact or wildcard or [None])[0]
    if chosen is None:
        where = ", ".join("%s:%s" % (b.get("HostIp"), b.get("HostPort")) for b in bindings)
        return None, "container port %s is published on %s, not on %s" % (key, where, host_ip)
    try:
        return int(chosen["HostPort"]), ""
    except (KeyError, TypeError, ValueError):
        return None, "container port %s has no host port yet" % key


def _container_order(item: dict[str, t.Any]) -> tuple[int, str]:
    labels = item.get("Labels") or {}
    try:
        number = int(labels.get(LABEL_NUMBER, "0"))
    except ValueError:
        number = 0
    return number, (item.get("Names") or [""])[0]


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
    labels: dict[str, str | None] = {LABEL_PROJECT: project, LABEL_SERVICE: service}
    found = Discovery()
    for item in sorted(client.list_containers(labels=labels, all=True), key=_container_order):
        if (item.get("Labels") or {}).get(LABEL_ONEOFF, "False") == "True":
            continue  # `docker compose run` containers are not part of the service
        try:
            info = client.inspect_container(item["Id"])
        except DockerNotFound:
            continue  # removed between list and inspect
        name = (info.get("Name") or item["Id"][:12]).lstrip("/")
        state = info.get("State") or {}
        status = state.get("Status", "unknown")
        health = _health_of(info)
        reason = ""
        if status != "running" or state.get("Restarting") or state.get("Paused"):
            reason = "not running (%s)" % status
        elif health not in (None, "healthy"):
            reason = "health is %s" % health
        host_port = None
        if not reason:
            host_port, reason = _published_port(info, port, host_ip)
        if reason or host_port is None:
            found.skipped.append(SkippedContainer(name, status, health, reason))
            continue
        weight = (weights or {}).get(name)
        address = "%s:%d" % (host_ip if host_ip not in _WILDCARD_IPS else DEFAULT_HOST_IP, host_port)
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


# --------------------------------------------------------------------------------------------------------
# Activation: write beside, test, reload; put the previous file back on failure
# --------------------------------------------------------------------------------------------------------


def nginx_error_line(output: str) -> str:
    """nginx's own words: the first [emerg]/[alert]/[crit]/[error] line, else the last line it printed."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if _NGINX_ERROR_RE.search(line):
            return line
    return lines[-1] if lines else "nginx -t failed without a message"


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str, content: str, mode: int = 0o644) -> None:
    """Write a temporary file beside path (a name nginx's *.conf globs skip), fsync it, rename it over path."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _put_back(path: str, previous: str | None) -> None:
    if previous is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        _fsync_dir(os.path.dirname(path) or ".")
    else:
        write_atomic(path, previous)


@contextlib.contextmanager
def config_lock(lock_path: str | None) -> t.Iterator[None]:
    """Serialize every writer of this host's Nginx configuration (flock, released when the process exits)."""
    if not lock_path:
        yield
        return
    os.makedirs(os.path.dirname(lock_path) or ".", exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def activate(
    path: str,
    content: str | None,
    nginx: NginxControl | None = None,
    check_mode: bool = False,
    reload: bool = True,
    lock_path: str | None = DEFAULT_LOCK_PATH,
) -> ActivationResult:
    """Make `content` the file at `path` (None removes it) without ever leaving nginx on a broken config.

    Unchanged content: nothing is written, tested or reloaded. Otherwise the new file replaces the old one
    atomically, `nginx -t` checks the whole configuration, and a graceful reload applies it. When the test
    fails the previous file (or its absence) is put back and NginxConfigRejected carries nginx's error line.
    """
    nginx = nginx or NginxControl()
    with config_lock(None if check_mode else lock_path):
        previous = read_text(path)
        if previous == content:
            return ActivationResult(path, False, content or "", previous)
        if check_mode:
            return ActivationResult(path, True, content or "", previous, note="check mode: nothing written")
        if content is None:
            _put_back(path, None)
        else:
            write_atomic(path, content)
        test = nginx.test()
        if test.rc != 0:
            try:
                _put_back(path, previous)
            except OSError as exc:
                raise NginxConfigRejected(
                    "nginx -t rejected %s and putting the previous file back failed too (%s): fix the file by hand "
                    "before nginx reloads. nginx said: %s" % (path, exc, nginx_error_line(test.output)),
                    nginx_error_line(test.output),
                    {"path": path, "nginx_output": test.output},
                ) from exc
            after = nginx.test()
            error = nginx_error_line(test.output)
            raise NginxConfigRejected(
                "nginx -t rejected the new %s; the previous %s was put back and nginx keeps serving the last good "
                "configuration. nginx said: %s" % (path, "file" if previous is not None else "state (no file)", error),
                error,
                {
                    "path": path,
                    "nginx_output": test.output,
                    "rejected_content": content,
                    "test_after_restore": "ok" if after.rc == 0 else after.output,
                },
            )
        result = ActivationResult(path, True, content or "", previous, nginx_test=test.output)
        if not reload:
            result.note = "reload skipped (reload=false)"
        elif not nginx.is_running():
            result.note = "nginx is not running: it reads the new file when it starts"
        else:
            done = nginx.reload()
            result.reload_command = list(done.argv)
            if done.rc != 0:
                raise NginxReloadFailed(
                    "%s passed nginx -t but `%s` failed: %s" % (path, " ".join(done.argv), done.output.strip()),
                    {"path": path, "reload_output": done.output},
                )
            result.reloaded = True
        return result


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
    if not check_mode:
        os.makedirs(directory, exist_ok=True)
    done = activate(path, content, nginx=nginx, check_mode=check_mode, reload=reload, lock_path=lock_path)
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
) -> ActivationResult:
    """Remove an upstream file with the same safety (a site still using it makes nginx -t fail: it comes back)."""
    return activate(
        upstream_file_for(name, directory), None, nginx=nginx, check_mode=check_mode, reload=reload, lock_path=lock_path
    )


__all__ = [
    "DEFAULT_UPSTREAM_DIR",
    "ActivationResult",
    "CommandResult",
    "Discovery",
    "NginxConfigRejected",
    "NginxControl",
    "NginxReloadFailed",
    "NoHealthyServers",
    "Server",
    "SkippedContainer",
    "SyncResult",
    "Upstream",
    "UpstreamConfigError",
    "UpstreamError",
    "activate",
    "discover_servers",
    "nginx_error_line",
    "remove_upstream",
    "render_upstream",
    "sync_upstream",
    "upstream_file_for",
    "upstream_name",
]
