# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The drain of a rolling upgrade: are the containers switched away from still serving anything?

Private to this collection: not a public API, it may change in any release.

The drain ends when the last request or stream that still goes to the old containers is done, never at a fixed
time when nothing is in flight (docs/drain.md). Three signs, all read on the host:

- the established TCP connections from the host to an old container, by remote address and port, in
  /proc/net/tcp and /proc/net/tcp6: its published loopback port (Nginx and docker-proxy) and its own address on
  its networks (Nginx resolving the container by name, docker-proxy's side). This is the sign that holds whether
  the switch reloaded Nginx or not;
- the Nginx workers of before a reload, children of THIS host's Nginx master only (its pid file): they finish
  the requests they hold with the old configuration, then exit. Only those that are shutting down (a reload
  happened) and started after the containers were created (they could know them) count. Workers of another
  Nginx (a frontend container's) are other processes and never counted;
- the time since the switch: a switch that needs no reload (Nginx resolving names) may still send a new request to
  an old address until the resolver's answer expires (``settle_s``).

``drain_timeout`` bounds the wait; whatever is still open then is counted as cut and reported.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import ipaddress
import os
import time
import typing as t
from dataclasses import dataclass, field

from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import WATCH_INTERVAL_S

TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
TCP_ESTABLISHED = "01"
NGINX_PID_FILE = "/run/nginx.pid"
RELOAD_SETTLE_S = 1.0  # after a switch: the master has told its old workers to finish
_WORKER_TITLE = b"nginx: worker process"  # also "nginx: worker process is shutting down" after a reload
_SHUTTING_DOWN_TITLE = b"nginx: worker process is shutting down"
_MASTER_TITLE = b"nginx: master process"

Endpoint = tuple[str, int]  # (address as ipaddress prints it, port)
Connection = tuple[Endpoint, Endpoint]  # (local, remote)


# -- the connections --------------------------------------------------------------------------------------


def _parse_endpoint(text: str) -> Endpoint:
    """'0100007F:1F40' (or 32 hex digits for IPv6, each 32-bit word in host byte order) -> ('127.0.0.1', 8000).
    An IPv4-mapped IPv6 address is given as its IPv4 address."""
    address_hex, port_hex = text.rsplit(":", 1)
    raw = bytes.fromhex(address_hex)
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(packed)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (str(address), int(port_hex, 16))


def established_connections(tables: t.Iterable[str] = TCP_TABLES) -> set[Connection]:
    """Every established TCP connection of this network namespace, as (local, remote) endpoints."""
    found: set[Connection] = set()
    for table in tables:
        try:
            with open(table, encoding="ascii") as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 4 or cols[3] != TCP_ESTABLISHED:
                continue
            try:
                found.add((_parse_endpoint(cols[1]), _parse_endpoint(cols[2])))
            except ValueError:
                continue
    return found


def established_on_ports(ports: t.Iterable[int], tables: t.Iterable[str] = TCP_TABLES) -> int:
    """Established TCP connections with a local or remote port in `ports` (both ends of a loopback connection)."""
    wanted = set(ports)
    return sum(1 for local, remote in established_connections(tables) if local[1] in wanted or remote[1] in wanted)


@dataclass(frozen=True)
class Target:
    """Where the host reaches one old container: the published loopback port, and the container's own addresses.

    A request through the published port shows twice (Nginx -> docker-proxy, docker-proxy -> the container),
    a request to the container's address once; the container's count is the larger of the two, not the sum."""

    name: str
    published: tuple[Endpoint, ...] = ()
    direct: tuple[Endpoint, ...] = ()

    def connections(self, established: set[Connection]) -> tuple[set[Connection], set[Connection]]:
        published = {c for c in established if c[1] in self.published}
        direct = {c for c in established if c[1] in self.direct}
        return published, direct


def _container_ports(info: dict[str, t.Any]) -> list[int]:
    """The container-side TCP ports of an inspected container (published or only exposed)."""
    keys = list(((info.get("NetworkSettings") or {}).get("Ports") or {}).keys())
    keys += list(((info.get("Config") or {}).get("ExposedPorts") or {}).keys())
    ports = []
    for key in keys:
        number, _slash, proto = str(key).partition("/")
        if (proto or "tcp") == "tcp" and number.isdigit() and int(number) not in ports:
            ports.append(int(number))
    return ports


def target_of(name: str, host_port: int | None, info: dict[str, t.Any] | None) -> Target:
    """The Target of a container from its published host port and its inspect (None: gone, the port only)."""
    published: tuple[Endpoint, ...] = ()
    if host_port:
        published = (("127.0.0.1", host_port), ("::1", host_port))
    direct: list[Endpoint] = []
    if info:
        networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
        addresses = [
            str(net[key])
            for net in networks.values()
            for key in ("IPAddress", "GlobalIPv6Address")
            if isinstance(net, dict) and net.get(key)
        ]
        direct = [(str(ipaddress.ip_address(a)), port) for a in addresses for port in _container_ports(info)]
    return Target(name=name, published=published, direct=tuple(direct))


# -- the Nginx workers of this host's master --------------------------------------------------------------


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _parent_of(pid: str, proc: str) -> int | None:
    stat = _read("%s/%s/stat" % (proc, pid))
    if not stat:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
    fields = stat.rsplit(b")", 1)[-1].split()
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


def _same_pid_namespace(pid: str, proc: str) -> bool:
    try:
        return os.readlink("%s/%s/ns/pid" % (proc, pid)) == os.readlink("%s/self/ns/pid" % proc)
    except OSError:
        return False


def nginx_master(pid_file: str = NGINX_PID_FILE, proc: str = "/proc") -> int | None:
    """This host's Nginx master: the pid in its pid file, else the one master process in this pid namespace
    (a container's Nginx runs in its own pid namespace and is not ours)."""
    content = _read(pid_file)
    if content and content.strip().isdigit():
        pid = content.strip().decode()
        if (_read("%s/%s/cmdline" % (proc, pid)) or b"").startswith(_MASTER_TITLE):
            return int(pid)
    masters = [
        int(entry)
        for entry in os.listdir(proc)
        if entry.isdigit()
        and (_read("%s/%s/cmdline" % (proc, entry)) or b"").startswith(_MASTER_TITLE)
        and _same_pid_namespace(entry, proc)
    ]
    return masters[0] if len(masters) == 1 else None


def _started_at(pid: str, proc: str) -> float | None:
    """Unix time a process started: field 22 of its stat (clock ticks after boot) plus the boot time."""
    stat = _read("%s/%s/stat" % (proc, pid))
    boot = _read("%s/stat" % proc)
    if not stat or not boot:
        return None
    fields = stat.rsplit(b")", 1)[-1].split()
    btime = [line.split()[1] for line in boot.splitlines() if line.startswith(b"btime ")]
    if len(fields) < 20 or not btime:
        return None
    return int(btime[0]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def lingering_workers(not_before: float = 0.0, pid_file: str = NGINX_PID_FILE, proc: str = "/proc") -> set[int]:
    """The workers of this host's master that a reload told to finish ("is shutting down") and that started at
    or after `not_before` (unix time): those that may still route to containers created then. A switch without
    a reload leaves none; the current workers never count."""
    found = set()
    for pid in nginx_workers(pid_file, proc):
        if not (_read("%s/%d/cmdline" % (proc, pid)) or b"").startswith(_SHUTTING_DOWN_TITLE):
            continue
        started = _started_at(str(pid), proc)
        if started is None or started >= not_before:
            found.add(pid)
    return found


def nginx_workers(pid_file: str = NGINX_PID_FILE, proc: str = "/proc") -> set[int]:
    """PIDs of the worker processes of this host's Nginx master now (those of before a reload included, while
    they finish their requests). Empty when no master is found."""
    master = nginx_master(pid_file, proc)
    if master is None:
        return set()
    pids = set()
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        if (_read("%s/%s/cmdline" % (proc, entry)) or b"").startswith(_WORKER_TITLE) and _parent_of(
            entry, proc
        ) == master:
            pids.add(int(entry))
    return pids


# -- the drain --------------------------------------------------------------------------------------------


@dataclass
class DrainReport:
    """What the drain waited for and what it had to cut."""

    waited_s: float = 0.0
    # Distinct connections (requests, streams, WebSocket sessions) to the old containers seen during the drain.
    waited_for: int = 0
    # Those still open at drain_timeout: ended by the containers' stop, not by their clients.
    cut: int = 0
    old_workers_left: int = 0
    timed_out: bool = False
    per_container: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        if not self.timed_out:
            return "in-flight requests done after %.1f s, waited for %d connection(s)" % (
                self.waited_s,
                self.waited_for,
            )
        return "drain_timeout after %.1f s: %d of %d connection(s) cut, %d old Nginx worker(s) left" % (
            self.waited_s,
            self.cut,
            self.waited_for,
            self.old_workers_left,
        )

    def to_dict(self) -> dict[str, t.Any]:
        return {
            "waited_s": round(self.waited_s, 3),
            "waited_for": self.waited_for,
            "cut": self.cut,
            "old_workers_left": self.old_workers_left,
            "timed_out": self.timed_out,
            "per_container": dict(self.per_container),
        }


def open_connections(
    targets: list[Target], seen: dict[str, tuple[set[Connection], set[Connection]]], established: set[Connection]
) -> int:
    """Connections open now to `targets` (each counted once, see Target); adds them to `seen`."""
    total = 0
    for target in targets:
        published, direct = target.connections(established)
        before = seen.setdefault(target.name, (set(), set()))
        before[0].update(published)
        before[1].update(direct)
        total += max(len(published), len(direct))
    return total


def drain(
    targets: list[Target],
    workers_before: set[int],
    timeout_s: float,
    settle_until: float = 0.0,
    not_before: float = 0.0,
    workers: t.Callable[[], set[int]] | None = None,
    connections: t.Callable[[], set[Connection]] | None = None,
    interval_s: float = WATCH_INTERVAL_S,
) -> DrainReport:
    """Wait until the workers of before the switch have exited, no connection to `targets` is left and the
    monotonic time `settle_until` (the switch plus the resolver's validity) has passed, or `timeout_s`.
    `not_before`: when the targets were created (unix time); older workers never knew them.
    `workers` and `connections` read the host (lingering_workers, established_connections) unless given."""
    workers = workers or (lambda: lingering_workers(not_before))
    connections = connections or established_connections
    started = time.monotonic()
    deadline = started + timeout_s
    seen: dict[str, tuple[set[Connection], set[Connection]]] = {}
    while True:
        old_workers = workers_before & workers() if workers_before else set()
        remaining = open_connections(targets, seen, connections()) if targets else 0
        now = time.monotonic()
        if not old_workers and not remaining and now >= settle_until:
            timed_out = False
            break
        if now >= deadline:
            timed_out = True
            break
        time.sleep(interval_s)
    per_container = {name: max(len(p), len(d)) for name, (p, d) in seen.items()}
    return DrainReport(
        waited_s=time.monotonic() - started,
        waited_for=sum(per_container.values()),
        cut=remaining if timed_out else 0,
        old_workers_left=len(old_workers) if timed_out else 0,
        timed_out=timed_out,
        per_container=per_container,
    )


__all__ = [
    "RELOAD_SETTLE_S",
    "DrainReport",
    "Target",
    "drain",
    "established_connections",
    "established_on_ports",
    "lingering_workers",
    "nginx_master",
    "nginx_workers",
    "open_connections",
    "target_of",
]
