#!/usr/bin/env python3
"""Upgrade benchmark (issues 7 and 15): what a release costs real users, side by side with the peers.

On one sandbox host (created and provisioned when missing: docker_engine, compose_app with the demo backend on
1.0 x2, nginx), in one run, each method under the same load through the host's Nginx (tests/support/real_clients.py):
wrk (keep-alive), hey (keep-alive), hey -disable-keepalive and the project's own keep-alive client, together about
170 requests/s, 3 GET /api/version : 1 POST /api/echo; plus twenty SSE streams of 30-60 s and five WebSocket
sessions held open across the change (for ours opened once the new containers run beside the old, so that each
spans the switch), each checked for completeness.

1. naive: `docker compose up -d` with the new tag (then the upstream re-rendered from Docker, as the nginx role
   would), what most teams run today;
2. docker-rollout (wowu/docker-rollout, vendored in sandbox/tools/docker-rollout): scale to 2N with
   --no-recreate, wait for health, remove the old containers;
3. rolling_upgrade 1.0 -> 2.0;
4. rollback (to 1.0, the newest previous release) with playbooks/rollback.yml, with the time from the decision
   (launching ansible-playbook) to the first answer from the old version through Nginx, and the module's own
   switch time;
5. rolling_upgrade to the broken 3.0 (aborted at the health gate);
6. rolling_upgrade to 4.0 (half of /api/* answer 500: switched back in the bake; those 500s are the release's
   own answers, counted apart from the failures without an answer).

Prints one table: method, requests, failed by client, longest gap without a success, streams and sessions
completed/cut, wall time. Not a timed test.

    python3 bench/upgrade_bench.py [--host opsbook-bench] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))
import real_clients

DOCKER_ROLLOUT = REPO / "sandbox" / "tools" / "docker-rollout" / "docker-rollout"
VARS = {
    "compose_app_project": "demo",
    "compose_app_services": {
        "backend": {
            "image": "registry:5000/demo-backend",
            "tag": "1.0",
            "preset": "web",
            "replicas": 2,
            "environment": {"APP_SHUTDOWN_GRACE": "10"},
        }
    },
    "compose_app_healthcheck_overrides": {"interval": "5s", "timeout": "3s", "retries": 3, "start_period": "5s"},
    "compose_app_wait_timeout": 120,
    "nginx_compose_project": "demo",
    "nginx_upstreams": [{"service": "backend", "port": 8000}],
    # The WebSocket echo (/ws/echo) needs its route marked, as molecule/upgrade has it: without it every
    # handshake is answered 400.
    "nginx_routes": [{"path": "/ws/", "upstream": "backend", "websocket": True}, {"path": "/", "upstream": "backend"}],
    "nginx_streaming_paths": ["/sse"],
    "nginx_streaming_upstream": "backend",
    "docker_engine_source": "distro",
    "docker_engine_compose_source": "controller",
    "docker_engine_insecure_registries": ["registry:5000"],
}
# drain_timeout stays the module's default (300 s): the streams (30-60 s) are shorter and must not be cut.
OPTIONS = {"bake_s": 5, "bake_rate": 10, "bake_min_requests": 10, "bake_paths": ["/api/version"]}


def sh(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)


def ansible_env() -> dict:
    env = dict(os.environ)
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(REPO / "build" / "collections"))
    compose = next(iter(sorted((REPO / ".venv" / "lib").glob("python3*/site-packages/compose/docker-compose"))), None)
    env.setdefault("OPSBOOK_COMPOSE_BINARY", str(compose or ""))
    env["ANSIBLE_STDOUT_CALLBACK"] = "json"
    # As docs/performance.md advises operators: one connection round trip per module instead of four.
    env.setdefault("ANSIBLE_PIPELINING", "True")
    return env


def inventory(host: str, tmp: Path) -> Path:
    path = tmp / "inventory.json"
    data = {
        "all": {
            "hosts": {host: {}},
            "vars": {
                "ansible_connection": "community.docker.docker",
                "ansible_python_interpreter": "/usr/bin/python3",
                "docker_engine_compose_binary_src": ansible_env()["OPSBOOK_COMPOSE_BINARY"],
                **VARS,
            },
            "children": {"app": {"hosts": {host: {}}}},
        }
    }
    path.write_text(json.dumps(data))
    return path


def playbook(inv: Path, plays: list | Path, tmp: Path, extra: dict | None = None) -> dict:
    """The JSON report of plays (written to a file) or of a playbook file of the collection, with extra vars."""
    if isinstance(plays, Path):
        path = plays
    else:
        path = tmp / ("play-%d.json" % time.monotonic_ns())
        path.write_text(json.dumps(plays))
    argv = ["ansible-playbook", "-i", str(inv), str(path)]
    if extra:
        argv += ["-e", json.dumps(extra)]
    done = sh(argv, env=ansible_env(), timeout=1800)
    try:
        return json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError:
        raise SystemExit(
            "ansible-playbook said nothing useful:\n%s\n%s" % (done.stdout[-3000:], done.stderr[-3000:])
        ) from None


def task_result(report: dict, index: int = 0) -> dict:
    return next(iter(report["plays"][0]["tasks"][index]["hosts"].values()))


def named_task_result(report: dict, name: str) -> dict:
    """The one host's result of the task called name, in whichever play of a playbook it is."""
    for play in report["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"] == name:
                return next(iter(task["hosts"].values()))
    raise SystemExit("no task %r in the playbook's report" % name)


def module(inv: Path, tmp: Path, name: str, args: dict) -> dict:
    report = playbook(inv, [{"hosts": "all", "gather_facts": False, "tasks": [{"name": "m", name: args}]}], tmp)
    return task_result(report)


def address_of(host: str) -> str:
    return sh(
        ["docker", "inspect", "--format", '{{(index .NetworkSettings.Networks "opsbook-sandbox").IPAddress}}', host]
    ).stdout.strip()


def provision(host: str, inv: Path, tmp: Path) -> None:
    sh([sys.executable, str(REPO / "sandbox" / "sandbox.py"), "host", "create", host])
    report = playbook(
        inv,
        [
            {
                "hosts": "all",
                "gather_facts": True,
                "roles": [
                    {"role": "opsbook.stack.docker_engine"},
                    {"role": "opsbook.stack.compose_app"},
                    {"role": "opsbook.stack.nginx"},
                ],
            }
        ],
        tmp,
    )
    failures = report.get("stats", {}).get(host, {}).get("failures", 0)
    if failures:
        raise SystemExit("provisioning %s failed: %s" % (host, json.dumps(report)[-2000:]))
    # The registry's demo-backend, not an older copy from the host's image seed (sandbox/images changed since).
    for tag in ("1.0", "2.0", "3.0", "4.0"):
        on_host(host, "docker", "pull", "-q", "registry:5000/demo-backend:%s" % tag)
    on_host(host, "docker", "compose", "--project-directory", "/opt/demo", "up", "-d", "--wait")
    playbook(
        inv,
        [
            {
                "hosts": "all",
                "gather_facts": False,
                "tasks": [
                    {
                        "name": "upstream",
                        "opsbook.stack.nginx_upstream": {"project": "demo", "service": "backend", "port": 8000},
                    }
                ],
            }
        ],
        tmp,
    )


def on_host(host: str, *argv: str) -> str:
    return sh(["docker", "exec", host, *argv]).stdout


CLIENTS = ("wrk", "hey", "hey -disable-keepalive", "own keep-alive")
COMPOSE = "/opt/demo/compose.yaml"


def measure(label: str, address: str, action, rows: list[dict], started=None) -> dict:
    """One method under the four clients. The streams and sessions open 2 s before it starts, or, given
    `started` (a test that the new containers run beside the old), as soon as that holds: then every one spans
    the switch however slow the machine."""
    clients = real_clients.run_clients(address)
    own = next(c for c in clients if isinstance(c, real_clients.KeepAliveLoad))
    sessions = [] if started else real_clients.open_sessions(address)
    time.sleep(2)
    outcome: dict = {}
    start = time.monotonic()
    worker = threading.Thread(target=lambda: outcome.update(extra=action(own, start) or {}), daemon=True)
    worker.start()
    if started:
        deadline = time.monotonic() + 180
        while worker.is_alive() and not started() and time.monotonic() < deadline:
            time.sleep(0.3)
        sessions = real_clients.open_sessions(address)
    worker.join(1800)
    wall = time.monotonic() - start
    streams = real_clients.session_figures(sessions, timeout_s=150)
    time.sleep(1)
    figures = real_clients.stop_clients(clients)
    row = {
        "method": label,
        "requests": sum(f.requests for f in figures.values()),
        "clients": {name: f.to_dict() for name, f in figures.items()},
        "longest_gap_s": own.longest_gap(),
        "sessions": streams,
        "wall_s": round(wall, 2),
        **outcome.get("extra", {}),
    }
    rows.append(row)
    print(json.dumps(row), flush=True)
    return row


def print_table(rows: list[dict]) -> None:
    print()
    print(
        "| method | requests | failed: wrk | hey | hey -disable-keepalive | own keep-alive | longest gap (s) "
        "| SSE completed/cut | WebSocket completed/cut | wall time (s) | notes |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        failed = []
        for name in CLIENTS:
            client = row["clients"].get(name) or {}
            cell = str(client.get("failed", "-"))
            if client.get("failed") and client.get("transport_failed") != client.get("failed"):
                cell += " (%d without answer)" % client.get("transport_failed", 0)
            failed.append(cell)
        sse, ws = row["sessions"]["sse"], row["sessions"]["websocket"]
        notes = [n for n in (row.get("outcome"), row.get("note")) if n]
        if row.get("decision_to_old_serving_s") is not None:
            notes.append(
                "decision -> 1.0 serving %.2f s (module switch at %s s)"
                % (row["decision_to_old_serving_s"], row.get("module_switch_s"))
            )
        if row.get("drain"):
            drain = row["drain"]
            notes.append("drain %.1f s, waited for %d, cut %d" % (drain["waited_s"], drain["waited_for"], drain["cut"]))
        errors = sorted({e for c in row["clients"].values() for e in c["errors"]})[:4]
        if errors:
            notes.append("errors: " + ", ".join(errors))
        details = (sse["details"] + ws["details"])[:2]
        if details:
            notes.append("cut: " + "; ".join(details))
        print(
            "| %s | %d | %s | %.2f | %d/%d | %d/%d | %.1f | %s |"
            % (
                row["method"],
                row["requests"],
                " | ".join(failed),
                row["longest_gap_s"],
                sse["completed"],
                sse["cut"],
                ws["completed"],
                ws["cut"],
                row["wall_s"],
                "; ".join(notes),
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="opsbook-bench")
    parser.add_argument("--keep", action="store_true", help="keep the sandbox host afterwards")
    args = parser.parse_args()
    missing = real_clients.missing_tools()
    if missing:
        raise SystemExit("install %s on this machine first (apt-get install -y wrk hey)" % " ".join(missing))
    tmp = Path(tempfile.mkdtemp(prefix="upgrade-bench-"))
    inv = inventory(args.host, tmp)
    print("provisioning %s (docker_engine, compose_app demo 1.0 x2, nginx) ..." % args.host, flush=True)
    provision(args.host, inv, tmp)
    address = address_of(args.host)
    sh(["docker", "cp", str(DOCKER_ROLLOUT), "%s:/usr/local/lib/docker-rollout" % args.host])
    rows: list[dict] = []
    why_not: list[str] = []

    def rerender() -> None:
        module(inv, tmp, "opsbook.stack.nginx_upstream", {"project": "demo", "service": "backend", "port": 8000})

    def back_to_1() -> None:
        """A recorded 1.0 for the next method (not measured)."""
        rerender()
        module(
            inv, tmp, "opsbook.stack.rolling_upgrade", {"project": "demo", "services": {"backend": "1.0"}, **OPTIONS}
        )

    try:

        def naive(_own, _start) -> dict:
            on_host(args.host, "sed", "-i", "s#demo-backend:1.0#demo-backend:2.0#", COMPOSE)
            on_host(args.host, "docker", "compose", "--project-directory", "/opt/demo", "up", "-d")
            # The new containers have new ports: re-render the upstream from Docker, as the nginx role would.
            rerender()
            return {}

        measure("naive `docker compose up -d` 1.0 -> 2.0", address, naive, rows)
        back_to_1()

        def docker_rollout(_own, _start) -> dict:
            on_host(args.host, "sed", "-i", "s#demo-backend:1.0#demo-backend:2.0#", COMPOSE)
            done = sh(
                [
                    "docker",
                    "exec",
                    "-w",
                    "/opt/demo",
                    args.host,
                    "sh",
                    "/usr/local/lib/docker-rollout",
                    "rollout",
                    "-f",
                    COMPOSE,
                    "backend",
                ]
            )
            time.sleep(5)  # does the site come back by itself?
            last = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
            return {"outcome": "docker-rollout rc %d" % done.returncode, "note": last[0][:120]}

        row = measure("docker-rollout 1.0 -> 2.0", address, docker_rollout, rows)
        lost = sum(c["failed"] for c in row["clients"].values())
        if lost:
            why_not.append(
                "docker-rollout: ran as published; the routing watcher follows its containers, but it removes the "
                "old ones without draining them: %d failed requests, and the streams still open on them are cut" % lost
            )
        back_to_1()

        def upgrade(tag: str):
            def act(_own, _start) -> dict:
                done = module(
                    inv,
                    tmp,
                    "opsbook.stack.rolling_upgrade",
                    {"project": "demo", "services": {"backend": tag}, **OPTIONS},
                )
                return {
                    "outcome": "failed: %s" % done.get("msg", "")[:80] if done.get("failed") else "succeeded",
                    "drain": ((done.get("evidence") or {}).get("drain") or {}).get("backend"),
                    "timings": done.get("timings"),
                }

            return act

        def beside() -> bool:
            """More backend containers than the two of before: the new ones run beside the old."""
            ids = on_host(args.host, "docker", "ps", "-q", "--filter", "label=com.docker.compose.service=backend")
            return len(ids.split()) > 2

        measure("rolling_upgrade 1.0 -> 2.0", address, upgrade("2.0"), rows, beside)

        def rollback(own, start) -> dict:
            # What an operator runs: the playbook, timed from its launch (Python start, inventory and play load
            # included) to the first answer of 1.0 through Nginx.
            report = playbook(inv, REPO / "playbooks" / "rollback.yml", tmp, {"upgrade_options": OPTIONS})
            done = named_task_result(report, "Return to the earlier release with zero failed requests")
            return {
                "outcome": "failed: %s" % done.get("msg", "")[:80] if done.get("failed") else "succeeded",
                "decision_to_old_serving_s": own.first_version_after(start, "1.0"),
                "module_switch_s": (done.get("timings") or {}).get("backend_switched"),
                "steps": done.get("steps"),
                "drain": ((done.get("evidence") or {}).get("drain") or {}).get("backend"),
            }

        measure("rollback 2.0 -> 1.0", address, rollback, rows, beside)
        measure("rolling_upgrade 1.0 -> 3.0 (broken: aborted)", address, upgrade("3.0"), rows, beside)
        measure("rolling_upgrade 1.0 -> 4.0 (5xx: switched back)", address, upgrade("4.0"), rows, beside)
    finally:
        if not args.keep:
            sh([sys.executable, str(REPO / "sandbox" / "sandbox.py"), "host", "destroy", args.host])
    print_table(rows)
    for line in why_not:
        print(line)


if __name__ == "__main__":
    main()
