"""The fault matrix's pieces on the controller: the sandbox host, the playbooks, keep-alive load, the checks, the table.

A cell is one operation and one fault. It runs the operation the way an operator does (a playbook of playbooks/),
injects the fault when the host's helper (sandbox/faults.py, copied to the host by converge) says the operation
reached the phase, then reruns the same playbook under keep-alive load and checks what docs/fault-matrix.md
lists: one consistent state, a true journal, no failed request during the rerun, no data lost.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "support"))
from http_load import HttpLoad  # pylint: disable=wrong-import-position,import-error

PROJECT = "agentchat"
SERVICE = "backend"
REPLICAS = 2
UPSTREAMS = ("backend", "frontend")
HELPER = "/usr/local/sbin/opsbook-faults"
PROJECT_DIR = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
TABLE = PROJECT_DIR / "build" / "fault-matrix.txt"
CELLS_JSON = PROJECT_DIR / "build" / "fault-matrix.json"
# Short windows (the sandbox's health rhythm is 2 s, molecule/faults/group_vars/all/zz_faults.yml). A rerun waits
# for the project lock that a run orphaned by a killed ansible-playbook may still hold.
UPGRADE_OPTIONS = {
    "bake_s": 3,
    "bake_rate": 10,
    "bake_min_requests": 5,
    "bake_paths": ["/api/version"],
    "gate_requests": 5,
    "drain_timeout": 3,
    "lock_timeout": 180,
    # A container that never gets healthy (after a daemon restart, say) fails the run in a minute, not five.
    "health_timeout": 60,
}
VERSIONS = ("1.0", "2.0")
IMAGE = "registry:5000/demo-backend:%s"


# --------------------------------------------------------------------------------------------------------
# The host and its helper
# --------------------------------------------------------------------------------------------------------


def instance(host) -> str:
    return host.backend.host


def observe(host) -> dict:
    argv = [HELPER, "observe", "--project", PROJECT] + ["--upstream=%s" % s for s in UPSTREAMS]
    return json.loads(host.check_output(" ".join(argv)))


def helper_async(host, *args: str) -> subprocess.Popen:
    """The helper on the host while the operation runs (docker exec, not testinfra: it must not block)."""
    return subprocess.Popen(["docker", "exec", instance(host), "python3", HELPER, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def helper_result(proc: subprocess.Popen, timeout: float = 300) -> dict:
    out, err = proc.communicate(timeout=timeout)
    try:
        return json.loads(out)
    except ValueError:
        return {"reached": False, "fault": "helper failed: %s" % (err or out)[-300:]}


def running_version(state: dict) -> str:
    tags = sorted({c["image"].rsplit(":", 1)[1] for c in state["containers"]
                   if c["service"] == SERVICE and c["state"] == "running"})
    return ",".join(tags)


def service_ids(state: dict) -> list[str]:
    return [c["id"] for c in state["containers"] if c["service"] == SERVICE and c["state"] == "running"]


# --------------------------------------------------------------------------------------------------------
# Playbooks
# --------------------------------------------------------------------------------------------------------


def inventory() -> str:
    return str(Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "inventory")


def playbook_argv(name: str, extra: dict) -> list[str]:
    handle = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    handle.write(json.dumps(extra))
    handle.close()
    return ["ansible-playbook", "-i", inventory(), str(PROJECT_DIR / "playbooks" / name), "-e", "@" + handle.name]


def start_playbook(name: str, extra: dict) -> subprocess.Popen:
    # A session of its own: SIGKILL of "the Ansible process" is of its whole process group (the controller gone).
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="json")
    proc = subprocess.Popen(playbook_argv(name, extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=PROJECT_DIR, start_new_session=True)
    proc.started_at = time.monotonic()  # type: ignore[attr-defined]
    return proc


@dataclass
class PlaybookRun:
    rc: int
    changed: int = 0
    failed: int = 0
    msgs: list[str] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    killed: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        if self.killed:
            return "killed after %.0f s" % self.seconds
        return "rc %d, changed=%d in %.0f s%s" % (self.rc, self.changed, self.seconds,
                                                 (": " + self.msgs[0][:200]) if self.msgs else "")


def finish_playbook(proc: subprocess.Popen, killed: bool = False, timeout: float = 600) -> PlaybookRun:
    stdout, stderr = proc.communicate(timeout=timeout)
    run = PlaybookRun(rc=proc.returncode, killed=killed,
                      seconds=time.monotonic() - getattr(proc, "started_at", time.monotonic()))
    if killed:
        return run
    try:
        data = json.loads(stdout[stdout.index("{"):])
    except ValueError:
        run.msgs.append("no JSON from ansible-playbook: %s" % (stdout[-500:] + stderr[-500:]).strip())
        return run
    for stats in data.get("stats", {}).values():
        run.changed += stats.get("changed", 0)
        run.failed += stats.get("failures", 0) + stats.get("unreachable", 0)
    for play in data.get("plays", []):
        for task in play.get("tasks", []):
            for result in task.get("hosts", {}).values():
                run.results.append(result)
                if result.get("failed") and not result.get("skipped"):
                    run.msgs.append(str(result.get("msg", ""))[:400])
    return run


def run_playbook(name: str, extra: dict) -> PlaybookRun:
    return finish_playbook(start_playbook(name, extra))


def descendants(pid: int) -> list[int]:
    """Every process below pid (ansible's workers start sessions of their own: a process group is not enough)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/stat" % entry, encoding="utf-8") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_ansible(proc: subprocess.Popen) -> None:
    """SIGKILL of ansible-playbook and every process it started on the controller: the controller is gone.
    What runs on the host (the module under docker exec) goes on, as it would."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------------------------------------
# Keep-alive load through Nginx
# --------------------------------------------------------------------------------------------------------


class KeepAliveLoad(HttpLoad):
    """HttpLoad's workers, each on one keep-alive connection (reopened only after the server closed it or it
    failed), as browsers and API clients do; a request that fails on a reused connection is a failed request.
    ``window()`` starts a new count: the cell counts the fault and the rerun apart."""

    def __init__(self, address: str, workers: int = 3):
        super().__init__(address, workers=workers)
        self.local = threading.local()
        self.marks: list[tuple[str, int, int]] = []

    def _request(self, n: int) -> tuple[str, str]:
        conn = getattr(self.local, "conn", None)
        reused = conn is not None
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.address, self.port, timeout=self.timeout)
        path = "/api/echo" if n % 2 else "/api/version"
        try:
            if n % 2:
                conn.request("POST", path, body=b'{"n": %d}' % n, headers={"Content-Type": "application/json"})
            else:
                conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            if resp.will_close:
                conn.close()
                self.local.conn = None
            if resp.status != 200:
                return "HTTP %d on %s" % (resp.status, path), ""
            return "", (str(json.loads(body).get("version", "")) if path == "/api/version" else "")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn.close()
            self.local.conn = None
            return "%s%s: %s" % (type(exc).__name__, " (reused connection)" if reused else "", exc), ""

    def window(self, name: str) -> None:
        with self.lock:
            self.marks.append((name, self.total, self.failed))

    def counts(self) -> dict[str, dict]:
        """requests and failures per window, in order."""
        with self.lock:
            marks = [*self.marks, ("end", self.total, self.failed)]
            errors = list(self.errors)
        out = {}
        for (name, total, failed), (_, total2, failed2) in itertools.pairwise(marks):
            out[name] = {"requests": total2 - total, "failed": failed2 - failed, "errors": errors[failed:failed2][:3]}
        return out


def address(host) -> str:
    device = host.check_output("ip -4 -o route show default").split(" dev ")[1].split()[0]
    out = host.check_output("ip -4 -o addr show dev %s scope global" % device)
    return out.split(" inet ")[1].split("/")[0]


# --------------------------------------------------------------------------------------------------------
# The checks of every cell
# --------------------------------------------------------------------------------------------------------


def consistency(state: dict) -> list[str]:
    """One consistent state: what is wrong, empty when nothing is."""
    problems = []
    compose = state["compose"]
    if "__error__" in compose:
        return ["docker compose config fails: %s" % compose["__error__"].get("error")]
    by_service: dict[str, list[dict]] = {}
    for c in state["containers"]:
        by_service.setdefault(c["service"], []).append(c)
    for c in state["containers"]:
        if c["service"] not in compose:
            problems.append("orphan container %s (service %s is not in compose.yaml)" % (c["name"], c["service"]))
        elif c["state"] != "running":
            problems.append("container %s is %s" % (c["name"], c["state"]))
        elif c["image"] != compose[c["service"]]["image"]:
            wanted = compose[c["service"]]["image"]
            problems.append("%s runs %s, compose.yaml says %s" % (c["name"], c["image"], wanted))
    for name, svc in compose.items():
        running = [c for c in by_service.get(name, []) if c["state"] == "running"]
        if len(running) != svc["replicas"]:
            problems.append("%s: %d containers running, compose.yaml wants %d" % (name, len(running), svc["replicas"]))
    for name, servers in state["upstreams"].items():
        # Compared in the form the servers are listed in: published ports (upstream files) or the containers' own
        # addresses (the resolver's hosts files, docs/routing.md).
        loopback = all(sv.startswith("127.0.0.1:") for sv in servers) if servers else False
        healthy = sorted(e for c in by_service.get(name, [])
                         if c["state"] == "running" and c["health"] in ("healthy", None)
                         for e in c["endpoints"] if e.startswith("127.0.0.1:") == loopback)
        if not servers:
            healthy = [c["name"] for c in by_service.get(name, [])
                       if c["state"] == "running" and c["health"] in ("healthy", None)]
        if sorted(servers) != healthy:
            problems.append("upstream %s lists %s, the healthy containers are %s" % (name, servers, healthy))
    if state["gate_files"]:
        problems.append("gate left behind: %s" % ", ".join(state["gate_files"]))
    if state["nginx_test"] != 0:
        problems.append("nginx -t fails")
    left = {n: p for n, p in state["module_pids"].items() if p}
    if left:
        problems.append("module processes still running: %s" % left)
    return problems


def new_records(before: dict, after: dict) -> list[dict]:
    """Records the cell wrote or changed, oldest first."""
    old = {r["id"]: r for r in before["journal"]}
    return [r for r in after["journal"] if r["id"] not in old or old[r["id"]] != r]


def baked(record: dict) -> bool:
    """A succeeded record is true only for a release that passed its bake and finished."""
    if record.get("phase"):
        return record["phase"] == "done"
    return "%s_done" % SERVICE in record.get("timings", [])


def journal_truth(before: dict, after: dict, killed_record: str | None, module_survived: bool) -> tuple[str, list[str]]:
    """(the journal's story of the cell, what in it is false)."""
    records = new_records(before, after)
    problems = []
    story = " -> ".join("%s%s" % (r["status"], "/" + r["phase"] if r.get("phase") else "") for r in records) or "none"
    for r in records:
        if r["status"] == "in_progress":
            problems.append("record %s left in_progress" % r["id"])
        if r["status"] == "succeeded" and r["kind"] in ("upgrade", "rollback") and not baked(r):
            problems.append("record %s says succeeded but was never baked (%s)" % (r["id"], r["detail"][:80]))
        if r.get("phase") and r["status"] == "succeeded" and r["phase"] != "done":
            problems.append("record %s: status succeeded with phase %s" % (r["id"], r["phase"]))
    if killed_record and not module_survived:
        killed = next((r for r in after["journal"] if r["id"] == killed_record), None)
        if killed is not None and killed["status"] == "succeeded" and not baked(killed):
            problems.append("the killed run %s is recorded succeeded" % killed_record)
    current = [r for r in after["journal"] if r["status"] == "succeeded"]
    if current:
        newest = current[-1]
        image = newest["images"].get(SERVICE)
        runs = {c["image"] for c in after["containers"] if c["service"] == SERVICE and c["state"] == "running"}
        if image and runs != {image}:
            problems.append("newest succeeded record %s names %s, %s runs" % (newest["id"], image, sorted(runs)))
    return story, problems


# --------------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------------


# What a cell checks (docs/fault-matrix.md): the fault happened where it should, the rerun succeeded, one consistent
# state, a true journal, no failed request during the rerun, no data lost.
CRITERIA = ("fault", "rerun", "state", "journal", "load", "data")


@dataclass
class Row:
    operation: str
    fault: str
    outcome: str = "not run"
    journal: str = ""
    failed_rerun: str = ""
    failed_fault: str = ""
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # the criteria that failed, in CRITERIA order

    def fail(self, criterion: str, *messages: str) -> None:
        """Record what broke a criterion (nothing when messages is empty)."""
        assert criterion in CRITERIA, criterion
        for message in messages:
            self.problems.append("%s: %s" % (criterion, message))
            if criterion not in self.failed:
                self.failed = [c for c in CRITERIA if c in (*self.failed, criterion)]

    def conclude(self) -> None:
        self.outcome = "ok" if not self.problems else "FAIL " + ",".join(self.failed)


ROWS: list[Row] = []
STARTED = time.monotonic()


def render(rows: list[Row]) -> str:
    head = ("operation", "phase / fault", "outcome", "journal (cell's records)", "failed (rerun)", "failed (fault)",
            "s")
    body = [(r.operation, r.fault, r.outcome, r.journal, r.failed_rerun, r.failed_fault, "%.0f" % r.seconds)
            for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    def line(values) -> str:
        return "| " + " | ".join("%-*s" % (w, str(v)) for w, v in zip(widths, values, strict=True)) + " |"

    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(b) for b in body]
    passed = sum(r.outcome == "ok" for r in rows)
    out.append("")
    out.append("%d of %d cells ok; matrix time %.0f s" % (passed, len(rows), time.monotonic() - STARTED))
    for r in rows:
        if r.problems or r.notes:
            out.append("")
            out.append("%s / %s:" % (r.operation, r.fault))
            out += ["  - FAIL %s" % p for p in r.problems] + ["  - note: %s" % n for n in r.notes]
    return "\n".join(out) + "\n"


def save(rows: list[Row]) -> None:
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text(render(rows))
    CELLS_JSON.write_text(json.dumps([r.__dict__ for r in rows], indent=2) + "\n")
