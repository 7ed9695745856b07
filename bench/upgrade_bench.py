#!/usr/bin/env python3
"""Upgrade benchmark (issue 7): what a release costs the users, under constant GET+POST load through Nginx.

On one sandbox host (created and provisioned when missing: docker_engine, compose_app with the demo backend on
1.0 x2, nginx), in one run and under the same load (>= 100 requests/s from this machine through the host's Nginx,
half GET /api/echo, half POST /api/echo, one connection per request):

1. naive: `docker compose up -d` with the new tag (then the upstream re-rendered from Docker, as the nginx role
   would), what most teams run today;
2. rolling_upgrade 1.0 -> 2.0;
3. rolling_upgrade to the broken 3.0 (auto-abort);
4. rollback (to 1.0, the newest previous release), with the time from the decision (launching the playbook) to
   the first answer from the old version through Nginx, and the module's own switch time.

Prints one table: requests, failed, longest gap without a success, wall time. Not a timed test.

    python3 bench/upgrade_bench.py [--host opsbook-bench] [--rate 150] [--keep]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARS = {
    "compose_app_project": "demo",
    "compose_app_services": {
        "backend": {"image": "registry:5000/demo-backend", "tag": "1.0", "preset": "web", "replicas": 2}
    },
    "compose_app_healthcheck_overrides": {"interval": "5s", "timeout": "3s", "retries": 3, "start_period": "5s"},
    "compose_app_wait_timeout": 120,
    "nginx_compose_project": "demo",
    "nginx_upstreams": [{"service": "backend", "port": 8000}],
    "nginx_routes": [{"path": "/", "upstream": "backend"}],
    "docker_engine_source": "distro",
    "docker_engine_compose_source": "controller",
    "docker_engine_insecure_registries": ["registry:5000"],
}
OPTIONS = {"bake_s": 5, "bake_rate": 10, "bake_min_requests": 10, "bake_paths": ["/api/version"], "drain_timeout": 10}


class Load:
    """Constant-rate GET+POST through Nginx; records every outcome with its time and the version that answered."""

    def __init__(self, address: str, rate: float, workers: int = 12):
        self.address = address
        self.interval = workers / rate
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.events: list[tuple[float, bool, str]] = []  # (time, ok, version or error)
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)]

    def _run(self, index: int) -> None:
        n = index
        next_at = time.monotonic() + index * self.interval / len(self.threads)
        while not self.stop.is_set():
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += self.interval
            n += 1
            conn = http.client.HTTPConnection(self.address, 80, timeout=10)
            try:
                if n % 2:
                    conn.request(
                        "POST", "/api/echo", body=b'{"bench": true}', headers={"Content-Type": "application/json"}
                    )
                else:
                    conn.request("GET", "/api/version")
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200
                what = "HTTP %d" % resp.status
                if ok and n % 2 == 0:
                    what = json.loads(body).get("version", "")
                elif ok:
                    what = ""
            except (OSError, http.client.HTTPException, ValueError) as exc:
                ok, what = False, type(exc).__name__
            finally:
                conn.close()
            with self.lock:
                self.events.append((time.monotonic(), ok, what))

    def start(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)

    def window(self, start: float, end: float) -> dict:
        with self.lock:
            events = sorted(e for e in self.events if start <= e[0] <= end)
        failed = [e for e in events if not e[1]]
        gap, last_ok = 0.0, start
        for at, ok, _ in events:
            if ok:
                gap = max(gap, at - last_ok)
                last_ok = at
        gap = max(gap, end - last_ok)
        return {
            "requests": len(events),
            "failed": len(failed),
            "longest_gap_s": round(gap, 3),
            "rate": round(len(events) / max(end - start, 0.001), 1),
            "errors": sorted({e[2] for e in failed})[:4],
        }

    def first_version_after(self, start: float, version: str) -> float | None:
        with self.lock:
            hits = [e[0] for e in self.events if e[0] >= start and e[1] and e[2] == version]
        return min(hits) - start if hits else None


def sh(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)


def ansible_env() -> dict:
    env = dict(os.environ)
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(REPO / "build" / "collections"))
    compose = next(iter(sorted((REPO / ".venv" / "lib").glob("python3*/site-packages/compose/docker-compose"))), None)
    env.setdefault("OPSBOOK_COMPOSE_BINARY", str(compose or ""))
    env["ANSIBLE_STDOUT_CALLBACK"] = "json"
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


def playbook(inv: Path, plays: list, tmp: Path) -> dict:
    path = tmp / ("play-%d.json" % time.monotonic_ns())
    path.write_text(json.dumps(plays))
    done = sh(["ansible-playbook", "-i", str(inv), str(path)], env=ansible_env(), timeout=1800)
    try:
        return json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError:
        raise SystemExit(
            "ansible-playbook said nothing useful:\n%s\n%s" % (done.stdout[-3000:], done.stderr[-3000:])
        ) from None


def task_result(report: dict, index: int = 0) -> dict:
    return next(iter(report["plays"][0]["tasks"][index]["hosts"].values()))


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


def on_host(host: str, *argv: str) -> str:
    return sh(["docker", "exec", host, *argv]).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="opsbook-bench")
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second (GET+POST)")
    parser.add_argument("--keep", action="store_true", help="keep the sandbox host afterwards")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="upgrade-bench-"))
    inv = inventory(args.host, tmp)
    print("provisioning %s (docker_engine, compose_app demo 1.0 x2, nginx) ..." % args.host, flush=True)
    provision(args.host, inv, tmp)
    address = address_of(args.host)
    rows = []
    load = Load(address, args.rate).start()
    time.sleep(3)
    try:

        def measure(label: str, action) -> dict:
            time.sleep(2)
            start = time.monotonic()
            extra = action() or {}
            end = time.monotonic()
            time.sleep(1)
            row = {"case": label, **load.window(start, end), "wall_s": round(end - start, 2), **extra}
            rows.append(row)
            print(json.dumps(row), flush=True)
            return row

        def naive() -> dict:
            compose = "/opt/demo/compose.yaml"
            on_host(args.host, "sed", "-i", "s#demo-backend:1.0#demo-backend:2.0#", compose)
            on_host(args.host, "docker", "compose", "--project-directory", "/opt/demo", "up", "-d")
            # The new containers have new ports: re-render the upstream from Docker, as the nginx role would.
            module(inv, tmp, "opsbook.stack.nginx_upstream", {"project": "demo", "service": "backend", "port": 8000})
            return {}

        measure("naive `docker compose up -d` 1.0 -> 2.0", naive)
        # Back to a recorded 1.0 for the rest (not measured).
        module(
            inv, tmp, "opsbook.stack.rolling_upgrade", {"project": "demo", "services": {"backend": "1.0"}, **OPTIONS}
        )
        result: dict = {}

        def upgrade(tag: str):
            def act() -> dict:
                result.clear()
                result.update(
                    module(
                        inv,
                        tmp,
                        "opsbook.stack.rolling_upgrade",
                        {"project": "demo", "services": {"backend": tag}, **OPTIONS},
                    )
                )
                return {"outcome": "failed (aborted)" if result.get("failed") else "succeeded"}

            return act

        measure("rolling_upgrade 1.0 -> 2.0", upgrade("2.0"))
        measure("rolling_upgrade 2.0 -> 3.0 (broken)", upgrade("3.0"))

        def rollback() -> dict:
            decided = time.monotonic()
            done = module(inv, tmp, "opsbook.stack.rollback", {"project": "demo", **OPTIONS})
            serving = load.first_version_after(decided, "1.0")
            return {
                "outcome": "failed" if done.get("failed") else "succeeded",
                "decision_to_old_serving_s": round(serving, 2) if serving is not None else None,
                "module_switch_s": (done.get("timings") or {}).get("backend_switched"),
            }

        measure("rollback 2.0 -> 1.0", rollback)
    finally:
        load.finish()
        if not args.keep:
            sh([sys.executable, str(REPO / "sandbox" / "sandbox.py"), "host", "destroy", args.host])
    print()
    print("| case | requests | failed | longest gap without success (s) | wall time (s) | req/s | notes |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        notes = []
        if row.get("outcome"):
            notes.append(row["outcome"])
        if row.get("decision_to_old_serving_s") is not None:
            notes.append(
                "decision -> 1.0 serving %.2f s (module switch at %s s)"
                % (row["decision_to_old_serving_s"], row.get("module_switch_s"))
            )
        if row["errors"]:
            notes.append("errors: " + ", ".join(row["errors"]))
        print(
            "| %s | %d | %d | %.2f | %.1f | %.0f | %s |"
            % (
                row["case"],
                row["requests"],
                row["failed"],
                row["longest_gap_s"],
                row["wall_s"],
                row["rate"],
                "; ".join(notes),
            )
        )


if __name__ == "__main__":
    main()
