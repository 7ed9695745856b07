"""rolling_upgrade and rollback against the real engine and the real Nginx of a sandbox host: issue 7's faults.

Load runs from the controller through the host's Nginx (POST /api/echo, GET /api/version) during every change; a request
fails when it gets no answer or a status other than 200. Figures go to build/molecule-upgrade-figures.json.
The tests run in file order and each leaves the project on a known release for the next.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "support"))
from http_load import HttpLoad  # noqa: E402  pylint: disable=wrong-import-position,import-error

PROJECT = "demo"
UPSTREAM = "/etc/nginx/upstreams.d/hosts.d/demo_backend"  # docs/routing.md
JOURNAL = "/var/lib/opsbook/demo/releases"
COMPOSE = "/opt/demo/compose.yaml"
PROJECT_DIR = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
FIGURES = PROJECT_DIR / "build" / "molecule-upgrade-figures.json"
FAST = {"bake_s": 4, "bake_rate": 10, "bake_min_requests": 10, "bake_paths": ["/api/version"], "drain_timeout": 10}


def record(name: str, value) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data[name] = value
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print("FIGURE %s = %s" % (name, json.dumps(value)))


# --------------------------------------------------------------------------------------------------------
# Running the modules and the playbooks
# --------------------------------------------------------------------------------------------------------


def inventory() -> str:
    return str(Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "inventory")


def playbook_for(module: str, args: dict, check: bool = False) -> str:
    play = [{"hosts": "all", "gather_facts": False, "tasks": [
        {"name": "run", module: args, "check_mode": check}]}]
    handle = tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False)
    handle.write(json.dumps(play))
    handle.close()
    return handle.name


def start(module: str, args: dict, check: bool = False) -> subprocess.Popen:
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="json")
    return subprocess.Popen(["ansible-playbook", "-i", inventory(), playbook_for(module, args, check)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate(timeout=600)
    try:
        data = json.loads(stdout[stdout.index("{"):])
    except ValueError:
        raise AssertionError("no JSON from ansible-playbook: %s %s" % (stdout[-2000:], stderr[-2000:])) from None
    hosts = data["plays"][0]["tasks"][0]["hosts"]
    return next(iter(hosts.values()))


def run(module: str, args: dict, check: bool = False) -> dict:
    return finish(start(module, args, check))


def run_playbook(path: str, extra: dict) -> dict:
    """A playbook of the collection as an operator runs it; the JSON callback's whole result."""
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="json")
    done = subprocess.run(["ansible-playbook", "-i", inventory(), str(PROJECT_DIR / path), "-e", json.dumps(extra)],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    try:
        return json.loads(done.stdout[done.stdout.index("{"):])
    except ValueError:
        raise AssertionError("no JSON from ansible-playbook: %s %s"
                             % (done.stdout[-2000:], done.stderr[-2000:])) from None


def upgrade(tag: str, **options) -> dict:
    return run("opsbook.stack.rolling_upgrade", {"project": PROJECT, "services": {"backend": tag}, **FAST, **options})


# --------------------------------------------------------------------------------------------------------
# The state of the host
# --------------------------------------------------------------------------------------------------------


def backend_containers(host) -> list[dict]:
    out = host.check_output("docker ps -a --filter label=com.docker.compose.project=demo --filter "
                            "label=com.docker.compose.service=backend --format '{{json .}}'")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def versions_running(host) -> list[str]:
    return sorted(c["Image"].rsplit(":", 1)[1] for c in backend_containers(host) if c["State"] == "running")


def upstream_ports(host) -> list[str]:
    """The addresses the resolver serves for the backend (bridge IPs; docs/routing.md)."""
    return sorted(re.findall(r"^(\d+\.\d+\.\d+\.\d+) ", host.file(UPSTREAM).content_string, re.M))


def container_ip(host, cid: str) -> str:
    return host.check_output("docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' %s" % cid)


def container_ports(host) -> list[str]:
    ports = []
    for c in backend_containers(host):
        assert c["State"] == "running", "leftover container %s (%s)" % (c["Names"], c["State"])
        ports.append(container_ip(host, c["ID"]).strip())
    return sorted(ports)


def releases(host) -> list[dict]:
    names = host.check_output("ls %s" % JOURNAL).split()
    out = [json.loads(host.file("%s/%s" % (JOURNAL, n)).content_string) for n in names if n.endswith(".json")]
    return sorted(out, key=lambda r: (r["created_ts"], r["id"]))


def compose_image(host) -> str:
    return re.search(r"^    image: (\S+)$", host.file(COMPOSE).content_string, re.M).group(1)


def assert_consistent(host, version: str) -> None:
    """One consistent state: N replicas on the version, no orphans, upstream == containers, journal settled."""
    assert versions_running(host) == [version, version]
    assert upstream_ports(host) == container_ports(host)
    assert compose_image(host) == "registry:5000/demo-backend:%s" % version
    # The gate closed: its name lists no address (the file may not exist yet).
    gate = host.run("cat /etc/nginx/upstreams.d/hosts.d/demo_backend_gate").stdout
    assert not re.search(r"^\d", gate, re.M)
    assert all(r["status"] != "in_progress" for r in releases(host))
    assert all(r["phase"] in ("done", "failed", "rolled_back", "interrupted") for r in releases(host))
    assert host.run("nginx -t").rc == 0


def served_version(address: str) -> str:
    conn = http.client.HTTPConnection(address, 80, timeout=5)
    conn.request("GET", "/health")
    body = json.loads(conn.getresponse().read())
    conn.close()
    return body["version"]


# --------------------------------------------------------------------------------------------------------
# The tests, in order
# --------------------------------------------------------------------------------------------------------


def test_converge_upgraded_to_2_and_recorded_it(host, address):
    assert_consistent(host, "2.0")
    assert served_version(address) == "2.0"
    journal = releases(host)
    assert journal[-1]["kind"] == "upgrade" and journal[-1]["status"] == "succeeded"
    assert journal[-1]["services"]["backend"]["image"] == "registry:5000/demo-backend:2.0"
    assert journal[-1]["services"]["backend"]["digest"].startswith("registry:5000/demo-backend@sha256:")
    assert journal[0]["kind"] == "deploy"  # compose_app's record of 1.0


def test_check_mode_returns_the_plan_and_changes_nothing(host):
    before = (host.file(COMPOSE).sha256sum, container_ports(host), len(releases(host)))
    result = run("opsbook.stack.rolling_upgrade", {"project": PROJECT, "services": {"backend": "3.0"}}, check=True)
    assert result["changed"] is True
    plan = result["plan"][0]
    assert plan["action"] == "rolling"
    assert plan["from"]["image"].endswith(":2.0") and plan["to"]["image"].endswith(":3.0")
    assert plan["from"]["digest"].startswith("registry:5000/demo-backend@sha256:")
    assert plan["to"]["digest"].startswith("registry:5000/demo-backend@sha256:")
    assert plan["from"]["digest"] != plan["to"]["digest"]
    assert (host.file(COMPOSE).sha256sum, container_ports(host), len(releases(host))) == before
    same = run("opsbook.stack.rolling_upgrade", {"project": PROJECT, "services": {"backend": "2.0"}}, check=True)
    assert same["changed"] is False and same["plan"][0]["action"] == "none"


@pytest.mark.parametrize("module, args, message", [
    ("opsbook.stack.rolling_upgrade", {"services": {"nosuch": "2.0"}}, "unknown service nosuch"),
    ("opsbook.stack.rolling_upgrade", {"services": {"backend": ""}}, "no tag given for backend"),
    ("opsbook.stack.rolling_upgrade", {"services": {}}, "services is empty"),
    ("opsbook.stack.rollback", {"release": "20000101T000000Z-deadbeef"}, "is not in /var/lib/opsbook/demo/releases"),
])
def test_bad_arguments_fail_and_change_nothing(host, module, args, message):
    before = (host.file(COMPOSE).sha256sum, container_ports(host), len(releases(host)), host.file(UPSTREAM).sha256sum)
    result = run(module, {"project": PROJECT, **args})
    assert result.get("failed") is True and result["changed"] is False
    assert message in result["msg"]
    assert "nothing was changed" in result["msg"]
    assert (host.file(COMPOSE).sha256sum, container_ports(host), len(releases(host)),
            host.file(UPSTREAM).sha256sum) == before


def test_rollback_to_the_previous_release_under_load(host, address):
    running_id = host.check_output("docker inspect --format '{{.Image}}' %s" % backend_containers(host)[0]["ID"])
    # The newest succeeded release that does not run now: on a fresh host, compose_app's deploy of 1.0.
    deploy = [r for r in releases(host) if r["status"] == "succeeded"
              and r["services"]["backend"]["image_id"] != running_id][-1]
    with HttpLoad(address) as load:
        result = run("opsbook.stack.rollback", {"project": PROJECT, **FAST})
    record("rollback_2_to_1", {**load.figures(), "timings": result.get("timings")})
    assert result.get("failed") is not True, result.get("msg")
    assert result["rolled_back_to"] == deploy["id"]
    assert load.failed == 0, load.errors[:10]
    assert_consistent(host, "1.0")
    assert served_version(address) == "1.0"
    last = releases(host)[-1]
    assert last["kind"] == "rollback" and last["status"] == "succeeded" and last["extra"]["rollback_of"] == deploy["id"]
    # The release rolled back from is never a rollback target again (issue 14, defect 1).
    left = {r["id"]: r for r in releases(host)}[last["extra"]["rolls_back_from"][0]]
    assert left["status"] == "rolled_back" and left["phase"] == "rolled_back"
    assert left["services"]["backend"]["image"].endswith(":2.0")
    # The time to the switch (issue 15: <= 5 s from the launch) is a speed target: bench/upgrade_bench.py
    # prints it beside the peers' on a quiet machine; a timed assert here only measured the machine's load.


def test_the_rollback_playbook_rerun_right_after_a_rollback_changes_nothing(host, address):
    before = (host.file(COMPOSE).sha256sum, container_ports(host), len(releases(host)), host.file(UPSTREAM).sha256sum)
    with HttpLoad(address) as load:
        data = run_playbook("playbooks/rollback.yml", {"upgrade_hosts": "all", "upgrade_options": FAST})
    stats = next(iter(data["stats"].values()))
    assert stats["failures"] == 0 and stats["unreachable"] == 0, data["stats"]
    assert stats["changed"] == 0, data["stats"]
    assert load.failed == 0, load.errors[:10]
    assert_consistent(host, "1.0")
    assert served_version(address) == "1.0"
    assert (host.file(COMPOSE).sha256sum, container_ports(host), len(releases(host)),
            host.file(UPSTREAM).sha256sum) == before


def test_upgrade_1_to_2_under_load_loses_no_request_and_twice_is_no_change(host, address):
    with HttpLoad(address) as load:
        result = upgrade("2.0")
    record("upgrade_1_to_2", {**load.figures(), "timings": result.get("timings")})
    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is True
    assert load.failed == 0, load.errors[:10]
    assert load.total > 100
    assert_consistent(host, "2.0")
    assert served_version(address) == "2.0"
    again = upgrade("2.0")
    assert again["changed"] is False and again["plan"][0]["action"] == "none"
    assert releases(host)[-1]["id"] == result["release"]["id"]


def test_broken_release_is_aborted_before_the_switch(host, address):
    last = releases(host)[-1]["id"]
    with HttpLoad(address) as load:
        result = upgrade("3.0")
    evidence = result.get("evidence", {})
    figures = {**load.figures(), "timings": result.get("timings")}
    first = (evidence.get("evidence") or [{}])[0]
    figures["aborted_after_last_check_s"] = first.get("aborted_after_last_check_s")
    figures["health_interval_s"] = first.get("health_interval_s")
    record("broken_3_aborted", figures)
    assert result.get("failed") is True
    assert "became unhealthy" in result["msg"] and "undone" in result["msg"]
    assert load.failed == 0, load.errors[:10]
    # Aborted within one health interval of the check that turned the container unhealthy.
    assert first["aborted_after_last_check_s"] is not None
    assert first["aborted_after_last_check_s"] < first["health_interval_s"]
    assert first["health_log"] and first["health_log"][-1]["exit_code"] != 0
    assert "logs" in first
    assert "backend_switched" not in result["timings"]  # the upstream never saw 3.0
    assert_consistent(host, "2.0")
    assert served_version(address) == "2.0"
    journal = releases(host)
    assert journal[-2]["id"] == last and journal[-1]["id"] == result["release"]["id"]
    assert journal[-1]["status"] == "failed" and "became unhealthy" in journal[-1]["detail"]
    assert journal[-1]["services"]["backend"]["image"].endswith(":3.0")


def test_release_answering_5xx_is_switched_back_in_the_bake(host, address):
    with HttpLoad(address) as load:
        result = upgrade("4.0", bake_s=15, bake_min_requests=10)
    record("bake_5xx_switched_back", {**load.figures(), "timings": result.get("timings"),
                                      "bake": result.get("evidence", {}).get("bake")})
    assert result.get("failed") is True
    assert "bake failed" in result["msg"] and "5xx ratio" in result["msg"]
    assert "backend_switched" in result["timings"] and "backend_switched_back" in result["timings"]
    assert result["evidence"]["bake_failing_requests"]
    assert_consistent(host, "2.0")
    assert served_version(address) == "2.0"
    assert releases(host)[-1]["status"] == "failed"


def test_two_upgrades_at_once_the_second_fails_clearly(host, address):
    # The first one goes through a canary (half of the traffic for 3 s) before the full switch.
    first = start("opsbook.stack.rolling_upgrade",
                  {"project": PROJECT, "services": {"backend": "1.0"}, **FAST, "bake_s": 6, "canary_weight": 50,
                   "canary_s": 4})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(backend_containers(host)) < 4:
        time.sleep(0.3)
    second = upgrade("2.0")
    waited = upgrade("1.0", lock_timeout=120)  # waits for the first, then has nothing to do
    done = finish(first)
    assert second.get("failed") is True and second["changed"] is False
    assert "project demo is locked by upgrade" in second["msg"]
    assert done.get("failed") is not True, done.get("msg")
    assert any("canary, new containers take 50%" in step for step in done["steps"])
    assert done["evidence"]["canary"]["backend"]["ok"] is True
    assert waited.get("failed") is not True and waited["changed"] is False
    assert_consistent(host, "1.0")


def test_killed_in_the_bake_a_rerun_never_records_it_unbaked(host, address):
    """Issue 14, defect 2: the old verifier asserted that the rerun completed the killed upgrade as `succeeded`
    without a bake. Now the killed record ends `interrupted` (never a rollback target), the rerun first puts the
    traffic back on the old containers, then upgrades again with the full gate and bake."""
    with HttpLoad(address) as load:
        proc = start("opsbook.stack.rolling_upgrade",
                     {"project": PROJECT, "services": {"backend": "2.0"}, **FAST, "bake_s": 30})
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not switched_to_new(host):
            time.sleep(0.2)
        assert switched_to_new(host), "the upgrade did not reach its bake"
        # The module's own pid, from its in-progress journal record ("upgrade in progress (pid N)"): with
        # pipelining the module runs from stdin, and no AnsiballZ_ file name shows in `ps`.
        found = re.search(r"in progress \(pid (\d+)\)", releases(host)[-1].get("detail", ""))
        assert found, "the module's pid is not in its journal record: %s" % releases(host)[-1]
        host.run("kill -9 %s" % found.group(1))
        proc.communicate(timeout=60)
        interrupted = releases(host)[-1]
        # The phase is written right after the switch, before the bake starts.
        assert interrupted["status"] == "in_progress" and interrupted["phase"] in ("switched", "baking")
        assert interrupted["extra"]["progress"]["service"] == "backend"
        rerun = upgrade("2.0")
    record("killed_in_bake_then_rerun", {**load.figures(), "reconciled": rerun.get("reconciled")})
    assert rerun.get("failed") is not True, rerun.get("msg")
    assert any("switched back to the old containers" in line for line in rerun["reconciled"]), rerun["reconciled"]
    assert load.failed == 0, load.errors[:10]
    assert_consistent(host, "2.0")
    journal = {r["id"]: r for r in releases(host)}
    killed = journal[interrupted["id"]]
    assert killed["status"] == "failed" and killed["phase"] == "interrupted"
    assert "interrupted in phase %s" % interrupted["phase"] in killed["detail"]
    last = releases(host)[-1]
    assert last["id"] != interrupted["id"] and last["status"] == "succeeded" and last["phase"] == "done"
    assert rerun["evidence"]["bake"]["backend"]["ok"] is True  # baked in full by the rerun
    assert served_version(address) == "2.0"


def switched_to_new(host) -> bool:
    """The upstream lists only containers that run 2.0 (the switch happened, the bake is on)."""
    new_ports = set()
    for c in backend_containers(host):
        if c["State"] == "running" and c["Image"].endswith(":2.0"):
            out = host.run("docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' %s"
                           % c["ID"]).stdout.strip()
            if out:
                new_ports.add(out)
    return bool(new_ports) and set(upstream_ports(host)) == new_ports
