# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The routing watcher: Nginx follows Docker's state by itself, within a second or two.

Private to this collection: not a public API, it may change in any release.

docs/routing.md "The watcher". A small program on the host (the nginx role's ``opsbook-routing-watch`` systemd
unit runs it from the collection's own module_utils copied there; standard library only):

    python3 -S -m ansible_collections.opsbook.stack.plugins.module_utils._routing_watch --config FILE

It listens to Docker's container events (through the one Engine client, ``_docker``). When a container of a
routed web service starts, changes health, dies or is destroyed, it re-reads the service's healthy containers
with the one upstream function (``_upstream.sync_upstream``) and rewrites the service's hosts file when it
changed (without any address once no container of the service runs, so Nginx answers 502 at once instead of
waiting on dead addresses); the resolver serves the new addresses at once, and Nginx uses them within its
resolver validity. Nothing is reloaded and no Nginx configuration is written, so no untested configuration can
become live.

While the project's lock (``_project_lock``) is held by an upgrade, a rollback or a restore, that run decides
the routing: the watcher only notes the service and reconciles it as soon as the lock is free. It reads the lock
state from /proc/locks instead of taking the lock, so it never makes an upgrade fail with "locked".
A full reconcile of every route runs at start, after any lost connection to Docker and every ``resync_s``.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import argparse
import fcntl
import json
import os
import queue
import sys
import threading
import time
import typing as t
from dataclasses import dataclass, field

from ansible_collections.opsbook.stack.plugins.module_utils._compose import LABEL_PROJECT, LABEL_SERVICE
from ansible_collections.opsbook.stack.plugins.module_utils._docker import (
    DEFAULT_DOCKER_HOST,
    DockerClient,
    DockerError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._project_lock import DEFAULT_ROOT, lock_path
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import (
    DEFAULT_UPSTREAM_DIR,
    NoHealthyServers,
    UpstreamError,
    sync_upstream,
    upstream_name,
)

# Container actions that can change which containers serve a service ("health_status: healthy" and friends
# arrive with a suffix). "start" also covers a restart by Docker's restart policy on a new port or address.
ROUTING_ACTIONS = ("start", "die", "destroy", "stop", "kill", "pause", "unpause", "health_status")
# Signals that end a container (TERM, INT, QUIT: the stop signals in use; KILL: the end of a stop's timeout), as
# Docker's "kill" event gives them. Other signals (HUP for a reload) leave it routed.
STOP_SIGNALS = ("2", "3", "9", "15")
# Events of one moment (die, then destroy) are handled together.
DEBOUNCE_S = 0.2
TICK_S = 0.2
RECONNECT_S = 1.0
DEFAULT_RESYNC_S = 30.0
PROC_LOCKS = "/proc/locks"


@dataclass(frozen=True)
class Route:
    project: str
    service: str
    port: int | None = None

    @property
    def name(self) -> str:
        return upstream_name(self.project, self.service)


@dataclass
class WatchConfig:
    routes: list[Route]
    upstream_dir: str = DEFAULT_UPSTREAM_DIR
    docker_host: str = DEFAULT_DOCKER_HOST
    lock_root: str = DEFAULT_ROOT
    resync_s: float = DEFAULT_RESYNC_S


def load_config(path: str) -> WatchConfig:
    """The JSON file the nginx role writes: {"routes": [{"project", "service", "port"}], "upstream_dir", ...}."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    routes = [Route(str(r["project"]), str(r["service"]), r.get("port")) for r in data.get("routes") or []]
    for route in routes:
        route.name  # validates both names  # noqa: B018
    return WatchConfig(
        routes=routes,
        upstream_dir=data.get("upstream_dir") or DEFAULT_UPSTREAM_DIR,
        docker_host=data.get("docker_host") or DEFAULT_DOCKER_HOST,
        lock_root=data.get("lock_root") or DEFAULT_ROOT,
        resync_s=float(data.get("resync_s") or DEFAULT_RESYNC_S),
    )


# --------------------------------------------------------------------------------------------------------
# Is a lock held? Read, never taken
# --------------------------------------------------------------------------------------------------------


def lock_is_held(path: str, proc_locks: str = PROC_LOCKS) -> bool:
    """Whether some process holds a flock on path, read from /proc/locks (taking it, even for a moment, could
    make an upgrade that starts at that moment fail with "locked"). Falls back to a shared try-lock when
    /proc/locks cannot be read."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    wanted = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    try:
        with open(proc_locks, encoding="ascii") as handle:
            rows = handle.read().splitlines()
    except OSError:
        return _try_shared(path)
    for row in rows:
        cols = row.split()
        if "->" in cols or len(cols) < 6 or cols[1] != "FLOCK":
            continue  # a waiter, not a holder; or a POSIX lock (the project lock is a flock)
        if cols[5] == wanted:
            return True
    return False


def _try_shared(path: str) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------------
# The watcher
# --------------------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    # journald adds the time; one line per decision.
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def _action(event: dict[str, t.Any]) -> str:
    """A container event's action without its detail ("health_status: healthy" -> "health_status")."""
    return str(event.get("Action") or event.get("status") or "").split(":", 1)[0]


@dataclass
class Watcher:
    config: WatchConfig
    client: t.Any = None
    clock: t.Callable[[], float] = time.monotonic
    log: t.Callable[[str], None] = _log
    # Route -> when to reconcile it (clock time).
    pending: dict[Route, float] = field(default_factory=dict)
    deferred: set[Route] = field(default_factory=set)
    # Container id -> why it is leaving: Docker sent it a stop signal (`docker stop` sends the stop signal, then
    # SIGKILL; the container keeps running and may keep passing its health check through its shutdown grace,
    # but it accepts no new connection). Until it starts again or is destroyed, it is not routed to. This is
    # what a killed upgrade leaves: the lock frees while an old container is half-way through its stop.
    leaving: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.client is None:
            self.client = DockerClient(self.config.docker_host)
        self._routes = {(r.project, r.service): r for r in self.config.routes}

    def route_of(self, event: dict[str, t.Any]) -> Route | None:
        if event.get("Type") != "container":
            return None
        action = _action(event)
        if action not in ROUTING_ACTIONS:
            return None
        labels = (event.get("Actor") or {}).get("Attributes") or {}
        return self._routes.get((labels.get(LABEL_PROJECT, ""), labels.get(LABEL_SERVICE, "")))

    def on_event(self, event: dict[str, t.Any]) -> None:
        route = self.route_of(event)
        if route is None:
            return
        action = _action(event)
        actor = event.get("Actor") or {}
        cid = str(actor.get("ID") or event.get("id") or "")
        if cid:
            signal = str((actor.get("Attributes") or {}).get("signal") or "")
            if action == "kill" and signal in STOP_SIGNALS:
                self.leaving[cid] = "being stopped (Docker sent it signal %s)" % signal
            elif action in ("start", "destroy"):
                self.leaving.pop(cid, None)
        self.pending.setdefault(route, self.clock() + DEBOUNCE_S)

    def resync(self) -> None:
        """Every route, now: at start, after a lost event stream, and every resync_s."""
        for route in self.config.routes:
            self.pending[route] = self.clock()

    def tick(self) -> None:
        now = self.clock()
        for route, due in sorted(self.pending.items(), key=lambda item: item[1]):
            if due > now:
                continue
            holder = lock_path(route.project, self.config.lock_root)
            if lock_is_held(holder):
                if route not in self.deferred:
                    self.log(
                        "%s: deferred, %s is held (the run that holds it decides the routing)" % (route.name, holder)
                    )
                    self.deferred.add(route)
                continue
            self.deferred.discard(route)
            del self.pending[route]
            self.reconcile(route)

    def reconcile(self, route: Route) -> bool:
        """Rewrite the route's hosts file from Docker's state; True when it changed."""
        try:
            done = sync_upstream(
                route.project,
                route.service,
                port=route.port,
                directory=self.config.upstream_dir,
                docker=self.client,
                empty_when_none_runs=True,
                leaving=self.leaving,
            )
        except NoHealthyServers as exc:
            self.log("%s: kept as it is: %s" % (route.name, exc))
            return False
        except (UpstreamError, DockerError, OSError) as exc:
            self.log("%s: not updated, will retry: %s" % (route.name, exc))
            self.pending[route] = self.clock() + RECONNECT_S
            return False
        if done.changed and not done.servers:
            self.log("%s: emptied: %s" % (route.name, done.note))
        elif done.changed:
            self.log("%s: now %s" % (route.name, ", ".join("%s (%s)" % (s.address, s.comment) for s in done.servers)))
        return done.changed

    # -- the loop -------------------------------------------------------------------------------------

    def read_events(self, events: queue.Queue[dict[str, t.Any] | None], stop: threading.Event) -> None:
        """Feed Docker's container events into `events`; None after each (re)connection asks for a resync."""
        query = {"filters": json.dumps({"type": ["container"]})}
        while not stop.is_set():
            try:
                with self.client.open_stream("GET", "/events", query=query, timeout=self.config.resync_s) as resp:
                    events.put(None)
                    buffer = b""
                    while not stop.is_set():
                        chunk = resp.read1(65536)
                        if not chunk:
                            break
                        buffer += chunk
                        while b"\n" in buffer:
                            line, buffer = buffer.split(b"\n", 1)
                            if line.strip():
                                events.put(json.loads(line))
            except (DockerError, OSError, ValueError) as exc:
                # A quiet stream times out after resync_s: reconnecting is the periodic resync.
                if not isinstance(exc, TimeoutError):
                    self.log("Docker events: %s; reconnecting in %g s" % (exc, RECONNECT_S))
                    stop.wait(RECONNECT_S)

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        events: queue.Queue[dict[str, t.Any] | None] = queue.Queue()
        reader = threading.Thread(target=self.read_events, args=(events, stop), daemon=True)
        reader.start()
        self.log("watching %s" % ", ".join(r.name for r in self.config.routes))
        while not stop.is_set():
            try:
                event = events.get(timeout=TICK_S)
                if event is None:
                    self.resync()
                else:
                    self.on_event(event)
            except queue.Empty:
                pass
            self.tick()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Keep the Nginx routes of web services in step with Docker.")
    parser.add_argument("--config", required=True, help="JSON file the nginx role writes")
    parser.add_argument("--once", action="store_true", help="reconcile every route once and exit")
    args = parser.parse_args(argv)
    watcher = Watcher(load_config(args.config))
    if args.once:
        for route in watcher.config.routes:
            watcher.reconcile(route)
        return 0
    watcher.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
