#!/usr/bin/env python3
"""Fault injection on a sandbox host: where a changing operation is, a fault at that moment, and the host's state.

The fault matrix (molecule/faults, docs/fault-matrix.md) copies this file into its sandbox host and runs it
there, as root, beside the operation it breaks. Standard library only: the host has python3 and the docker
CLI, nothing else is assumed.

    faults.py observe --project P [--upstream SERVICE ...]
        the host's state as JSON: the project's containers, what compose.yaml says, the Nginx upstreams,
        whether `nginx -t` passes, the release journal, module processes still running
    faults.py wait --project P --service S --phase PHASE --since TS --old ID,ID [--bake-s N] [--fault F]
        wait until a rolling_upgrade or rollback of S reached PHASE, then inject F (kill-module:NAME,
        restart-docker, break-nginx, or none: the caller kills Ansible itself) and print what was seen
    faults.py wait-process --pattern REGEX --state-dir DIR --phase PHASE [--fault kill-module:NAME]
        the same for backup and restore: a process matching REGEX (the dump or the restore client inside
        the database container), or the recorded phase in DIR's JSON records

How `wait` knows the phase: the release record carries a `phase` field (planned, starting, gated, switched,
baking, draining, done, failed, rolled_back, interrupted); when the record has no such field (collections
before the phases were recorded) the phase is read from Docker and Nginx instead: new containers exist
(starting), they are healthy and the gate closed (gated), the upstream lists only them (switched), a second
later (baking), the bake time later with the old containers still there (draining). The JSON printed says
which of the two it used.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import typing as t
import urllib.parse

PHASES = ("planned", "starting", "gated", "switched", "baking", "draining", "done")
TERMINAL = ("done", "failed", "rolled_back", "interrupted")
UPSTREAM_DIR = "/etc/nginx/upstreams.d"
JOURNAL_ROOT = "/var/lib/opsbook"
DOCKER_SOCKET = "/var/run/docker.sock"
BROKEN_NGINX = "/etc/nginx/conf.d/zz-fault-matrix-broken.conf"
SERVER_RE = re.compile(r"^\s*server\s+(\S+?)(?:\s[^;]*)?;", re.M)
# The resolver's hosts files (docs/routing.md): `# port N`, then one `<ip> <name>.opsbook.internal` line a server.
HOSTS_DIR = os.path.join(UPSTREAM_DIR, "hosts.d")
HOSTS_PORT_RE = re.compile(r"^# port ([0-9]+)$", re.M)
HOSTS_LINE_RE = re.compile(r"^([0-9.]+)\s+\S+", re.M)
POLL_S = 0.1
# Without a recorded phase: new containers healthy this long and no gate file seen counts as "gate passed".
GATE_UNSEEN_S = 1.5


# --------------------------------------------------------------------------------------------------------
# Reading the host
# --------------------------------------------------------------------------------------------------------


def run(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the Engine's unix socket: one request per look, no docker CLI process to start."""

    def __init__(self, path: str):
        super().__init__("localhost", timeout=10)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.socket_path)
        self.sock = sock


def engine_get(path: str) -> t.Any:
    """GET on the Docker Engine API; None when the engine does not answer (a daemon restart, for one)."""
    conn = _UnixConnection(DOCKER_SOCKET)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return json.loads(body) if resp.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def health_of(status: str) -> str | None:
    """The health in a container list's Status ("Up 5 seconds (healthy)"); None without a healthcheck."""
    for word, health in (("(healthy)", "healthy"), ("(unhealthy)", "unhealthy"), ("(health: starting)", "starting")):
        if word in status:
            return health
    return None


def containers(project: str) -> list[dict[str, t.Any]]:
    """Every container of the project (running or not): id, name, service, image, state, health, host ports."""
    filters = json.dumps({"label": ["com.docker.compose.project=%s" % project]})
    listed = engine_get("/containers/json?all=1&filters=%s" % urllib.parse.quote(filters)) or []
    out = []
    for summary in listed:
        labels = summary.get("Labels") or {}
        ports = sorted({int(p["PublicPort"]) for p in summary.get("Ports") or [] if p.get("PublicPort")})
        private = sorted({int(p["PrivatePort"]) for p in summary.get("Ports") or [] if p.get("PrivatePort")})
        networks = (summary.get("NetworkSettings") or {}).get("Networks") or {}
        ips = sorted({n["IPAddress"] for n in networks.values() if isinstance(n, dict) and n.get("IPAddress")})
        out.append(
            {
                "id": summary["Id"][:12],
                "name": (summary.get("Names") or ["?"])[0].lstrip("/"),
                "service": labels.get("com.docker.compose.service", ""),
                "image": summary.get("Image", ""),
                "state": summary.get("State", ""),
                "health": health_of(summary.get("Status", "")),
                "ports": ports,
                # Where Nginx can reach it: its published ports (upstream files) and its own addresses on the
                # container ports (the resolver's hosts files).
                "endpoints": ["127.0.0.1:%d" % p for p in ports] + ["%s:%d" % (ip, p) for ip in ips for p in private],
            }
        )
    return sorted(out, key=lambda c: (c["service"], c["name"]))


def compose_services(project_dir: str) -> dict[str, dict[str, t.Any]]:
    """service -> {image, replicas} as `docker compose config` reads compose.yaml (and its .env)."""
    done = run(["docker", "compose", "--project-directory", project_dir, "config", "--format", "json"])
    if done.returncode != 0:
        return {"__error__": {"image": "", "replicas": 0, "error": done.stderr.strip()[-500:]}}
    services = json.loads(done.stdout).get("services") or {}
    out = {}
    for name, svc in services.items():
        replicas = (svc.get("deploy") or {}).get("replicas") or svc.get("scale") or 1
        out[name] = {"image": svc.get("image", ""), "replicas": int(replicas)}
    return out


def upstream_servers(project: str, service: str) -> list[str]:
    """`address:port` of each server Nginx is given for the service: the resolver's hosts file, else the upstream
    file of older releases."""
    try:
        with open(os.path.join(HOSTS_DIR, "%s_%s" % (project, service)), encoding="utf-8") as handle:
            content = handle.read()
        port = HOSTS_PORT_RE.search(content)
        return sorted("%s:%s" % (ip, port.group(1)) for ip in HOSTS_LINE_RE.findall(content)) if port else []
    except OSError:
        pass
    try:
        with open(os.path.join(UPSTREAM_DIR, "%s_%s.conf" % (project, service)), encoding="utf-8") as handle:
            return sorted(SERVER_RE.findall(handle.read()))
    except OSError:
        return []


def gate_files() -> list[str]:
    """Open gates: an upstream file of the gate, or a gate hosts file that lists a server (a closed gate's is empty)."""
    if not os.path.isdir(HOSTS_DIR):  # older releases: the gate's upstream file exists only while it is open
        return sorted(glob.glob(os.path.join(UPSTREAM_DIR, "*_gate.conf")))
    # The gate's server block stays (the nginx role renders it ahead); the gate is open when its hosts file lists
    # a server.
    open_gates = []
    for path in glob.glob(os.path.join(HOSTS_DIR, "*_gate")):
        try:
            with open(path, encoding="utf-8") as handle:
                if HOSTS_LINE_RE.search(handle.read()):
                    open_gates.append(path)
        except OSError:
            continue
    return sorted(open_gates)


def journal(project: str) -> list[dict[str, t.Any]]:
    """The release records, oldest first; an unreadable one is listed with its error."""
    out = []
    for path in sorted(glob.glob(os.path.join(JOURNAL_ROOT, project, "releases", "*.json"))):
        try:
            with open(path, encoding="utf-8") as handle:
                record = json.load(handle)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            out.append({"id": os.path.basename(path)[:-5], "status": "unreadable", "created_ts": 0, "detail": str(exc)})
            continue
        extra = record.get("extra") or {}
        out.append(
            {
                "id": record.get("id"),
                "kind": record.get("kind"),
                "status": record.get("status"),
                "phase": record.get("phase"),
                "created_ts": record.get("created_ts") or 0,
                "detail": str(record.get("detail", ""))[:300],
                "images": {n: (s or {}).get("image", "") for n, s in (record.get("services") or {}).items()},
                "timings": sorted((extra.get("timings") or {}).keys()),
                "rollback_of": extra.get("rollback_of"),
            }
        )
    return sorted(out, key=lambda r: (float(r["created_ts"] or 0), str(r["id"])))


def module_pids(name: str) -> list[int]:
    """The python processes of an Ansible module run (AnsiballZ_<name>.py), not their sh and sudo wrappers."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        is_python = os.path.basename(argv[0]).startswith(b"python")
        if is_python and any(b"AnsiballZ_%s" % name.encode() in arg for arg in argv) and int(entry) != os.getpid():
            pids.append(int(entry))
    return sorted(pids)


def processes_matching(pattern: str) -> list[int]:
    regex = re.compile(pattern)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                line = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if regex.search(line) and "faults" not in line:  # not this helper (opsbook-faults, faults.py)
            pids.append(int(entry))
    return pids


def observe(project: str, project_dir: str, upstreams: list[str]) -> dict[str, t.Any]:
    return {
        "containers": containers(project),
        "compose": compose_services(project_dir),
        "upstreams": {s: upstream_servers(project, s) for s in upstreams},
        "gate_files": gate_files(),
        "broken_nginx_include": os.path.exists(BROKEN_NGINX),
        "nginx_test": run(["nginx", "-t"]).returncode,
        "journal": journal(project),
        "module_pids": {n: module_pids(n) for n in ("rolling_upgrade", "rollback", "backup", "restore")},
    }


# --------------------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------------------


def inject(fault: str) -> dict[str, t.Any]:
    """Carry out one fault now and say what it did."""
    if fault in ("", "none"):
        return {"fault": "none"}
    if fault.startswith("kill-module:"):
        name = fault.split(":", 1)[1]
        pids = module_pids(name)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return {"fault": fault, "killed": pids}
    if fault == "restart-docker":
        started = time.monotonic()
        done = run(["systemctl", "restart", "docker"], timeout=120)
        return {"fault": fault, "rc": done.returncode, "took_s": round(time.monotonic() - started, 2)}
    if fault == "break-nginx":
        with open(BROKEN_NGINX, "w", encoding="utf-8") as handle:
            handle.write(
                "# dropped by the fault matrix: `nginx -t` fails while this file is here\nnot_a_directive on;\n"
            )
        return {"fault": fault, "file": BROKEN_NGINX}
    raise SystemExit("unknown fault %r (kill-module:NAME, restart-docker, break-nginx, none)" % fault)


# --------------------------------------------------------------------------------------------------------
# Waiting for a phase of rolling_upgrade / rollback
# --------------------------------------------------------------------------------------------------------


def rank(phase: str) -> int:
    return PHASES.index(phase) if phase in PHASES else len(PHASES)


class Fallback:
    """The phase as Docker and Nginx show it, for records without a `phase` field."""

    def __init__(self, old_ids: set[str], bake_s: float, gate: bool):
        self.old_ids = old_ids
        self.bake_s = bake_s
        self.gate = gate
        self.gate_seen = False
        self.switched_at: float | None = None
        self.healthy_at: float | None = None

    def phase(self, record: dict[str, t.Any] | None, service: list[dict[str, t.Any]], servers: list[str]) -> str:
        new = [c for c in service if c["id"] not in self.old_ids]
        old_running = [c for c in service if c["id"] in self.old_ids and c["state"] == "running"]
        new_ports = {e for c in new for e in c.get("endpoints", ["127.0.0.1:%d" % p for p in c["ports"]])}
        self.gate_seen = self.gate_seen or bool(gate_files())
        if new_ports and servers and set(servers) <= new_ports:
            now = time.monotonic()
            if self.switched_at is None:
                self.switched_at = now
            if now - self.switched_at >= self.bake_s + 1.0:
                return "draining" if old_running else "done"
            if now - self.switched_at >= 1.0:
                return "baking"
            return "switched"
        healthy = bool(new) and all(c["health"] in ("healthy", None) and c["state"] == "running" for c in new)
        if healthy and self.healthy_at is None:
            self.healthy_at = time.monotonic()
        if healthy and not gate_files():
            # The gate closed, or it opened and closed between two looks (about a second after the health gate).
            if not self.gate or self.gate_seen or time.monotonic() - (self.healthy_at or 0) >= GATE_UNSEEN_S:
                return "gated"
        if new:
            return "starting"
        if record is not None and record.get("status") == "in_progress":
            return "planned"
        return ""


def on_time(phase: str, target: str) -> bool:
    """The phase is the target, or the one after it when a look came late (but never `done`: too late)."""
    return rank(target) <= rank(phase) <= rank(target) + 1 and (phase != "done" or target == "done")


def newest_since(project: str, since: float) -> dict[str, t.Any] | None:
    records = [r for r in journal(project) if float(r["created_ts"] or 0) >= since - 1.0]
    return records[-1] if records else None


def wait_phase(args: argparse.Namespace) -> dict[str, t.Any]:
    fallback = Fallback(set(filter(None, args.old.split(","))), args.bake_s, not args.no_gate)
    deadline = time.monotonic() + args.timeout
    started = time.monotonic()
    seen: list[str] = []
    while time.monotonic() < deadline:
        record = newest_since(args.project, args.since)
        service = [c for c in containers(args.project) if c["service"] == args.service]
        servers = upstream_servers(args.project, args.service)
        if record is not None and record.get("phase"):
            source, phase = "journal", str(record["phase"])
        else:
            source, phase = "docker+nginx", fallback.phase(record, service, servers)
        if phase and (not seen or seen[-1] != phase):
            seen.append(phase)
        if phase and on_time(phase, args.phase):
            result = inject(args.fault)
            return {
                "reached": True,
                "phase": phase,
                "source": source,
                "after_s": round(time.monotonic() - started, 2),
                "record": record and record["id"],
                "seen": seen,
                **result,
            }
        if source == "journal" and phase in TERMINAL:
            break
        if record is not None and record.get("status") not in (None, "in_progress") and source != "journal":
            break
        time.sleep(POLL_S)
    return {
        "reached": False,
        "phase": seen[-1] if seen else "",
        "seen": seen,
        "fault": "not injected",
        "after_s": round(time.monotonic() - started, 2),
    }


def state_phase(state_dir: str) -> str:
    """The phase recorded by a backup or restore in its JSON records under state_dir (newest first), if any."""
    paths = sorted(glob.glob(os.path.join(state_dir, "*.json")), key=os.path.getmtime, reverse=True)
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("phase"), str):
            return data["phase"]
    return ""


def wait_process(args: argparse.Namespace) -> dict[str, t.Any]:
    deadline = time.monotonic() + args.timeout
    started = time.monotonic()
    first_seen: float | None = None
    wanted = set(args.phase.split(","))
    while time.monotonic() < deadline:
        phase = state_phase(args.state_dir) if args.state_dir else ""
        if phase in wanted:
            return {
                "reached": True,
                "phase": phase,
                "source": "state",
                "after_s": round(time.monotonic() - started, 2),
                **inject(args.fault),
            }
        if processes_matching(args.pattern):
            first_seen = first_seen or time.monotonic()
            if time.monotonic() - first_seen >= args.settle_s:
                return {
                    "reached": True,
                    "phase": "process %s" % args.pattern,
                    "source": "process",
                    "after_s": round(time.monotonic() - started, 2),
                    **inject(args.fault),
                }
        time.sleep(POLL_S / 2)
    return {"reached": False, "phase": "", "fault": "not injected", "after_s": round(time.monotonic() - started, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    obs = sub.add_parser("observe")
    obs.add_argument("--project", required=True)
    obs.add_argument("--project-dir")
    obs.add_argument("--upstream", action="append", default=[])
    wait = sub.add_parser("wait")
    wait.add_argument("--project", required=True)
    wait.add_argument("--service", required=True)
    wait.add_argument("--phase", required=True, choices=PHASES)
    wait.add_argument("--since", type=float, required=True)
    wait.add_argument("--old", default="", help="ids (12 characters) of the service's containers before the run")
    wait.add_argument("--bake-s", type=float, default=4.0)
    wait.add_argument("--no-gate", action="store_true", help="the run has gate_requests: 0")
    wait.add_argument("--fault", default="none")
    wait.add_argument("--timeout", type=float, default=120.0)
    proc = sub.add_parser("wait-process")
    proc.add_argument("--pattern", required=True)
    proc.add_argument("--state-dir", default="")
    proc.add_argument("--phase", default="dumping,copying,swapping")
    proc.add_argument("--settle-s", type=float, default=0.2)
    proc.add_argument("--fault", default="none")
    proc.add_argument("--timeout", type=float, default=120.0)
    sub.add_parser("repair-nginx")
    args = parser.parse_args(argv)
    if args.command == "observe":
        out = observe(args.project, args.project_dir or "/opt/%s" % args.project, args.upstream)
    elif args.command == "wait":
        out = wait_phase(args)
    elif args.command == "wait-process":
        out = wait_process(args)
    else:
        existed = os.path.exists(BROKEN_NGINX)
        if existed:
            os.unlink(BROKEN_NGINX)
        out = {"removed": existed}
    json.dump(out, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
