"""Runbooks run through ansible-runner against a sandbox host (docker connection), as automation would run them.

0. an alert: the backend is stopped; Prometheus (the monitoring role's BackendDown rule) fires, Alertmanager sends
   its webhook to the responder (the collection's rulebook and event source under the real ansible-rulebook, on
   the controller), which runs service-down; its allow-listed step starts the backend, the next changing step
   waits for the operator, who approves with one command. Breakdown and run counts go to the figures.
1. service-down: the backend is stopped; the runbook brings it back. The audit file shows every step in order,
   health through Nginx is green afterwards; the time from the start of the run to the first 200 is measured.
2. planned-upgrade under load: silence, backup, upgrade 1.0 -> 2.0 with zero failed requests, verify, expire.
3. a plain converge (playbooks/site.yml) with the inventory still at 1.0, under load: 2.0 stays (the journal's
   release), zero failed requests, changed=0.
4. rollback under load: back to 1.0, zero failed requests.
5. a converge with the inventory at 2.0, under load: the web service moves by the rolling upgrade, zero failed
   requests; the next converge changes nothing.
The tests run in file order. Figures go to build/molecule-runbooks-figures.json.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "support"))
from http_load import HttpLoad  # noqa: E402  pylint: disable=wrong-import-position,import-error
from processes import stop_group  # noqa: E402  pylint: disable=wrong-import-position,import-error

PROJECT_DIR = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
INVENTORY = Path(os.environ.get("MOLECULE_INVENTORY_FILE", ""))
FIGURES = PROJECT_DIR / "build" / "molecule-runbooks-figures.json"
STEP_TASK = re.compile(r"^\[([a-z0-9-]+)\] ")

ansible_runner = pytest.importorskip("ansible_runner")


def record(name: str, value) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data[name] = value
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def steps_of(runbook: str) -> list[str]:
    text = (PROJECT_DIR / "runbooks" / ("%s.md" % runbook)).read_text()
    return [s["id"] for s in yaml.safe_load(text.split("\n---\n", 1)[0][4:])["steps"]]


@pytest.fixture(scope="module")
def address(host) -> str:
    device = host.check_output("ip -4 -o route show default").split(" dev ")[1].split()[0]
    out = host.check_output("ip -4 -o addr show dev %s scope global" % device)
    return re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out).group(1)


def run_runbook(tmp_path: Path, runbook: str, extravars: dict,
                metrics_file: Path | None = None) -> tuple[object, list[dict], float]:
    """One runbook through ansible_runner.run() on a private data dir; returns the run, the audit's step records
    (the run record last), seconds."""
    pdd = tmp_path / runbook
    # The playbook alone, as EDA's run_playbook copies it: it needs nothing beside it (its variables come from the
    # installed collection's role opsbook.stack.runbook).
    (pdd / "project").mkdir(parents=True)
    playbook = "runbook_%s.yml" % runbook.replace("-", "_")
    shutil.copy(PROJECT_DIR / "playbooks" / playbook, pdd / "project" / playbook)
    # Molecule's inventory (hosts, the docker connection and the scenario's group_vars) as the runner's inventory.
    shutil.copytree(INVENTORY.parent, pdd / "inventory")
    (pdd / "env").mkdir()
    (pdd / "env" / "extravars").write_text(yaml.safe_dump({"runbook_approved": True, **extravars}))
    audit_file = pdd / "audit.jsonl"
    (pdd / "env" / "envvars").write_text(yaml.safe_dump({
        "ANSIBLE_CALLBACKS_ENABLED": "opsbook.stack.runbook_progress",
        "OPSBOOK_RUNBOOK_AUDIT_FILE": str(audit_file),
        **({"OPSBOOK_RUNBOOK_METRICS_FILE": str(metrics_file)} if metrics_file else {})}))
    (pdd / "env" / "settings").write_text(yaml.safe_dump({"idle_timeout": 300, "job_timeout": 900}))
    started = time.monotonic()
    run = ansible_runner.run(private_data_dir=str(pdd), playbook=playbook, quiet=True)
    elapsed = time.monotonic() - started
    stdout = run.stdout.read()
    assert run.status == "successful" and run.rc == 0, stdout[-6000:]
    ids: list[str] = []
    for event in run.events:
        if event.get("event") in ("runner_on_ok", "runner_on_failed", "runner_on_skipped"):
            match = STEP_TASK.match(event["event_data"].get("task", ""))
            if match and (not ids or ids[-1] != match.group(1)):
                ids.append(match.group(1))
    assert ids == steps_of(runbook), "event stream step order %s" % ids
    records = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert [r.get("step") for r in records] == steps_of(runbook) + [None]
    assert records[-1]["record"] == "run" and records[-1]["outcome"] == "succeeded", records[-1]
    records = records[:-1]
    assert "[runbook step 1/%d]" % len(steps_of(runbook)) in stdout
    return run, records, elapsed


def status_through_nginx(address: str, path: str = "/health") -> int:
    try:
        with urllib.request.urlopen("http://%s%s" % (address, path), timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def served_version(address: str) -> str:
    with urllib.request.urlopen("http://%s/health" % address, timeout=5) as resp:
        return json.loads(resp.read())["version"]


class FirstHealthy(threading.Thread):
    """Polls /health through Nginx every 0.1 s and remembers when it first answered 200."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.address, self.started, self.healthy_at = address, time.monotonic(), None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.healthy_at is None:
            if status_through_nginx(self.address) == 200:
                self.healthy_at = time.monotonic()
            self.stop.wait(0.1)


def errors_by_step(load: HttpLoad, records: list[dict]) -> dict[str, int]:
    """How many failed requests fell into each step's time window (from the audit records)."""
    counts: dict[str, int] = {}
    for moment in load.error_times:
        step = "outside"
        for rec in records:
            start = datetime.fromisoformat(rec["start"].replace("Z", "+00:00")).timestamp()
            if start <= moment <= start + rec["duration_s"] + 0.5:
                step = rec["step"]
        counts[step] = counts.get(step, 0) + 1
    return counts


def silences(host) -> list[dict]:
    return json.loads(host.check_output("python3 -c \"import urllib.request,sys; "
                                        "sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:9093/api/v2/silences')"
                                        ".read().decode())\""))


# The roles' own phases: the plays of site.yml for Docker, monitoring and backups have nothing to do here.
SITE_TAGS = "compose_app_configure,compose_app_service,nginx_configure,nginx_service"


def scenario_vars() -> dict:
    molecule = yaml.safe_load((PROJECT_DIR / "molecule" / "runbooks" / "molecule.yml").read_text())
    return molecule["provisioner"]["inventory"]["group_vars"]["all"]


def converge_site(*extra: str) -> str:
    """playbooks/site.yml as an operator runs it, on molecule's inventory; returns its output."""
    argv = ["ansible-playbook", "-i", str(INVENTORY), str(PROJECT_DIR / "playbooks" / "site.yml"),
            "--tags", SITE_TAGS, *extra]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=str(PROJECT_DIR), timeout=900, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, "site.yml exited %d:\n%s" % (proc.returncode, output[-5000:])
    return output


def flat(output: str) -> str:
    """The output with YAML's line folding and quote doubling undone, for messages that span lines."""
    return re.sub(r"\s+", " ", output).replace("''", "'").replace('\\"', '"')


def changed_in_recap(output: str) -> list[int]:
    return [int(n) for n in re.findall(r"^\S+\s+: ok=\d+\s+changed=(\d+)", output, re.M)]


# --------------------------------------------------------------------------------------------------------
# The tests, in order
# --------------------------------------------------------------------------------------------------------


BACKEND_HOSTS = "/etc/nginx/upstreams.d/hosts.d/demo_backend"  # docs/routing.md, "The watcher"
RESOLVER_VALID_S = 1.0  # each Nginx worker keeps the resolver's answer this long (docs/routing.md)
# Each worker re-resolves on its own timer: one valid period after the name was emptied a worker may still be in
# the middle of its next lookup. Two periods is when every worker has the empty answer (CI on a loaded machine saw
# one request wait for its 2 s timeout at 1.2 s, in two tests of one run; none at 2.2 s in the runs before).
ALL_WORKERS_RESOLVED_S = 2 * RESOLVER_VALID_S + 0.2


def emptied_within(host, within_s: float) -> float | None:
    """Seconds until the watcher has emptied the backend's name (no address line left), or None."""
    began = time.monotonic()
    while time.monotonic() - began < within_s:
        if not re.search(r"^\d+\.\d+\.\d+\.\d+ ", host.file(BACKEND_HOSTS).content_string, re.M):
            return time.monotonic() - began
        time.sleep(0.1)
    return None


def timed_status(address: str) -> tuple[int, float]:
    began = time.monotonic()
    status = status_through_nginx(address)
    return status, round(time.monotonic() - began, 2)


def restore_backend(host, address) -> None:
    """Leave the stack serving for the next tests: start the backend and wait until Nginx answers 200."""
    host.run("cd /opt/demo && docker compose start backend")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and status_through_nginx(address) != 200:
        time.sleep(0.5)


# --------------------------------------------------------------------------------------------------------
# 0. The alert-driven run
# --------------------------------------------------------------------------------------------------------

AM_DIR = "/etc/opsbook-test/alertmanager"


def on_host_http(host, url: str, method: str = "GET") -> dict | list:
    """A JSON answer from the host's loopback (Prometheus, Alertmanager), fetched inside the host."""
    code = ("import json,sys,urllib.request; r=urllib.request.Request(%r, method=%r, data=b'' if %r == 'POST' else None);"
            "sys.stdout.write(urllib.request.urlopen(r, timeout=5).read().decode() or 'null')" % (url, method, method))
    return json.loads(host.check_output("python3 -c %s" % shlex.quote(code)))


def backend_down_fired_at(host) -> float | None:
    """When Prometheus's BackendDown went from pending to firing (activeAt plus its 2 s `for:`), while active."""
    for group in on_host_http(host, "http://127.0.0.1:9090/api/v1/rules?type=alert")["data"]["groups"]:
        for rule in group["rules"]:
            for alert in rule.get("alerts", []):
                if rule["name"] == "BackendDown" and alert.get("state") == "firing" and alert.get("activeAt"):
                    return iso_time(alert["activeAt"]) + 2.0
    return None


def post_to_responder(url: str, payload: dict, token: str | None) -> tuple[int, dict | None]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", "Bearer %s" % token)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:  # not listening yet
        return 0, None


def audit_runs(audit: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    if audit.exists():
        for line in audit.read_text().splitlines():
            rec = json.loads(line)
            if rec["record"] == "step":
                runs.setdefault(rec["run_id"], []).append(rec)
    return runs


def run_records(audit: Path) -> list[dict]:
    """The audit's run records (one per finished run: its outcome)."""
    if not audit.exists():
        return []
    return [rec for rec in map(json.loads, audit.read_text().splitlines()) if rec["record"] == "run"]


def log_time(log: Path, needle: str, after: float = 0.0) -> float | None:
    """The wall-clock time of ansible-rulebook's first log line holding needle (its local-time stamp) at or
    after `after`."""
    for line in log.read_text(errors="replace").splitlines():
        if needle in line:
            match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ", line)
            if match:
                at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(match.group(2)) / 1000
                if at >= after:
                    return at
    return None


def iso_time(value: str) -> float:
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", value.replace("Z", "+00:00"))).timestamp()


def test_an_alert_runs_the_service_down_runbook(host, address, tmp_path):
    """Fault -> alert -> webhook -> rulebook -> runbook -> served again; and the cases that must start no run."""
    gateway = host.check_output("ip -4 -o route show default").split()[2]  # the controller, seen from the host
    with socket.socket() as sock:
        sock.bind((gateway, 0))
        port = sock.getsockname()[1]
    token = secrets.token_hex(16)
    url = "http://%s:%d/alerts" % (gateway, port)
    host.check_output("printf %%s %s > %s/responder_token && chmod 0644 %s/responder_token" % (token, AM_DIR, AM_DIR))
    host.check_output("cat > %s/alertmanager.yml <<'EOF'\n%s\nEOF" % (AM_DIR, yaml.safe_dump({
        # One group per alertname: BackendDown's absent() alert has no job or instance label, and the monitoring
        # role's group_by [alertname, job, instance] would make it a second group (a second event).
        "route": {"receiver": "responder", "group_by": ["alertname"], "group_wait": "1s",
                  "group_interval": "5s", "repeat_interval": "1h"},
        "receivers": [{"name": "responder", "webhook_configs": [{
            "url": url, "send_resolved": True,
            "http_config": {"authorization": {"credentials_file": "/etc/alertmanager-test/responder_token"}}}]}]})))
    on_host_http(host, "http://127.0.0.1:9093/-/reload", "POST")

    audit, log = tmp_path / "audit.jsonl", tmp_path / "responder.log"
    metrics = tmp_path / "textfile" / "opsbook_runbooks.prom"
    (tmp_path / "responder.yml").write_text(yaml.safe_dump({
        "opsbook_responder_host": gateway, "opsbook_responder_port": port, "opsbook_responder_token": token,
        "opsbook_responder_max_runs_per_hour": 1, "opsbook_responder_metrics_file": str(metrics)}))
    env = dict(os.environ, ANSIBLE_CALLBACKS_ENABLED="opsbook.stack.runbook_progress",
               OPSBOOK_RUNBOOK_AUDIT_FILE=str(audit), OPSBOOK_RUNBOOK_METRICS_FILE=str(metrics),
               TMPDIR=str(tmp_path))
    argv = [shutil.which("ansible-rulebook") or "ansible-rulebook", "-r", "opsbook.stack.alert_runbooks",
            "-i", str(INVENTORY.parent), "--vars", str(tmp_path / "responder.yml"), "-v"]
    with log.open("w") as out:
        responder = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
    figures: dict = {}
    try:
        deadline = time.monotonic() + 90
        while post_to_responder(url, {}, None)[0] != 401:
            assert responder.poll() is None and time.monotonic() < deadline, log.read_text()[-5000:]
            time.sleep(0.3)
        assert status_through_nginx(address) == 200

        # The fault: no replica answers. Prometheus's BackendDown fires after its 2 s `for:`.
        host.check_output("cd /opt/demo && docker compose stop backend")
        stopped_at = time.time()
        poller = FirstHealthy(address)
        assert emptied_within(host, 10.0) is not None
        time.sleep(ALL_WORKERS_RESOLVED_S)
        assert status_through_nginx(address) in (502, 503, 504)
        poller.start()
        deadline = time.monotonic() + 120
        fired_at = None  # read while the alert is active: once the run has brought the backend back it is gone
        while not any(r["step"] == "refresh-upstreams" for rs in audit_runs(audit).values() for r in rs):
            assert responder.poll() is None and time.monotonic() < deadline, log.read_text()[-6000:]
            fired_at = fired_at or backend_down_fired_at(host)
            time.sleep(0.25)
        poller.join(60)
        assert poller.healthy_at is not None, "Nginx never answered 200 again"
        healthy_at = time.time() - (time.monotonic() - poller.healthy_at)

        runs = audit_runs(audit)
        assert len(runs) == 1, json.dumps(runs, indent=1)
        (records,) = runs.values()
        by_step = {r["step"]: r for r in records}
        trigger = records[0]["trigger"]
        assert trigger["by"] == "alert" and trigger["approved"] is False
        assert trigger["auto_approved_steps"] == ["start-services"]
        assert {a["labels"]["alertname"] for a in trigger["alerts"]} == {"BackendDown"}
        assert all(a["fingerprint"] and a["startsAt"] for a in trigger["alerts"])
        assert by_step["start-services"]["status"] == "changed"
        # Not allow-listed: the run stopped before refreshing the upstreams, and changed nothing there.
        assert by_step["refresh-upstreams"]["status"] == "failed" and by_step["refresh-upstreams"]["changed"] is False
        assert "refresh-upstreams was not approved" in flat(log.read_text())
        # The run's outcome, in the audit and in the metrics file the RunbookAwaitingApproval alert reads.
        deadline = time.monotonic() + 60
        while not run_records(audit):
            assert time.monotonic() < deadline, "the alert's run never finished"
            time.sleep(0.25)
        (outcome,) = run_records(audit)
        assert outcome["outcome"] == "awaiting_approval" and outcome["awaiting_approval"] == ["refresh-upstreams"]
        assert outcome["approve_with"].startswith("ansible-playbook opsbook.stack.runbook_service_down ")
        assert 'opsbook_runbook_awaiting_approval{runbook="service-down",step="refresh-upstreams"} 1' in (
            metrics.read_text())

        accepted_at = log_time(log, "accepted: runbook service-down")
        first_step_at = iso_time(records[0]["start"])
        figures["breakdown_s"] = {
            "detection_and_for": round(fired_at - stopped_at, 2) if fired_at else None,
            "alertmanager_to_responder": round(accepted_at - fired_at, 2) if accepted_at and fired_at else None,
            "rulebook_to_first_step": round(first_step_at - accepted_at, 2) if accepted_at else None,
            "first_step_to_200": round(healthy_at - first_step_at, 2)}
        figures["fault_to_200_s"] = round(healthy_at - stopped_at, 2)
        figures["steps"] = [[r["step"], r["status"], r["duration_s"]] for r in records]

        # Cases that must start no run: no token, a burst of the same group, another group over the hourly
        # limit (max_runs_per_hour 1), and the resolved notification Alertmanager sends once the rule clears.
        group_key = trigger["alert_group"]
        firing = {"version": "4", "groupKey": group_key, "status": "firing", "receiver": "responder",
                  "alerts": [{"status": "firing", "labels": {"alertname": "BackendDown", "runbook_id": "service-down",
                                                            "project": "demo"},
                              "startsAt": trigger["alerts"][0]["startsAt"], "fingerprint": "burst"}]}
        figures["unauthenticated_status"] = post_to_responder(url, firing, None)[0]
        burst = [post_to_responder(url, firing, token)[1] for _ in range(3)]
        other = post_to_responder(url, dict(firing, groupKey=group_key + "-other"), token)[1]
        assert figures["unauthenticated_status"] == 401
        assert [answer["duplicates"] for answer in burst] == [1, 1, 1], burst
        assert other["limited"] == 1, other
        deadline = time.monotonic() + 60
        while log_time(log, "is resolved", after=healthy_at) is None:
            assert time.monotonic() < deadline, "no resolved notification reached the responder:\n" + log.read_text()[-4000:]
            time.sleep(0.5)
        time.sleep(2)  # room for a wrong run to start
        figures["resolved_s"] = round(log_time(log, "is resolved", after=healthy_at) - healthy_at, 2)
        figures["runs"] = {"alert": len(audit_runs(audit)), "unauthenticated": 0, "burst_of_3": 0,
                           "over_the_limit": 0, "resolved": 0}
        assert len(audit_runs(audit)) == 1, json.dumps(audit_runs(audit), indent=1)
    except AssertionError:
        restore_backend(host, address)
        raise
    finally:
        stop_group(responder)
        record("alert_driven", figures)
    assert token not in log.read_text() and token not in audit.read_text()

    # The operator approves the step that waited, with one command: the runbook by hand, approved.
    _run, approved, elapsed = run_runbook(tmp_path, "service-down", {"runbook_use_monitoring": False,
                                                                    "runbook_approved_by": "operator"},
                                          metrics_file=metrics)
    figures["approved_run_s"] = round(elapsed, 2)
    record("alert_driven", figures)
    assert {r["step"]: r["status"] for r in approved}["refresh-upstreams"] in ("ok", "changed")
    assert approved[0]["trigger"] == {"by": "operator", "approved": True, "approved_by": "operator"}
    assert status_through_nginx(address) == 200
    # Approved and succeeded: nothing waits for approval any more.
    assert "opsbook_runbook_awaiting_approval{" not in metrics.read_text()
    assert 'opsbook_runbook_consecutive_failures{runbook="service-down"} 0' in metrics.read_text()


def test_service_down_runbook_brings_the_backend_back(host, address, tmp_path):
    """The runbook's fault: the backend stopped behind everyone's back. What the operator needs from the
    routing is a quick 502 once the watcher has emptied the name and the workers' copies have expired, not
    requests hanging on the stopped containers' addresses (0 is the 2 s client timeout). The first 5xx alone
    proves nothing: another worker may still hold the old answer for a second."""
    assert status_through_nginx(address) == 200
    host.check_output("cd /opt/demo && docker compose stop backend")
    try:
        emptied_s = emptied_within(host, 10.0)
        assert emptied_s is not None, host.file(BACKEND_HOSTS).content_string
        time.sleep(ALL_WORKERS_RESOLVED_S)
        answers = [timed_status(address) for _ in range(6)]
        assert all(status in (502, 503, 504) and took < 1.0 for status, took in answers), answers
    except AssertionError:
        restore_backend(host, address)
        raise

    poller = FirstHealthy(address)
    poller.start()
    _run, records, elapsed = run_runbook(tmp_path, "service-down", {"runbook_use_monitoring": False})
    poller.stop.set()
    poller.join(5)

    assert poller.healthy_at is not None
    to_healthy = round(poller.healthy_at - poller.started, 2)
    by_step = {r["step"]: r for r in records}
    record("service_down", {"run_s": round(elapsed, 2), "start_to_healthy_s": to_healthy,
                            "emptied_s": round(emptied_s, 2),
                            "steps": [[r["step"], r["status"], r["duration_s"]] for r in records]})
    assert by_step["start-services"]["changed"] is True
    assert by_step["verify-health"]["status"] == "ok"
    assert by_step["verify-alerts"]["status"] == "skipped"  # no Prometheus in this scenario
    assert by_step["close-or-escalate"]["status"] == "ok"
    for path in ("/health", "/api/version", "/nginx-health"):
        assert status_through_nginx(address, path) == 200
    states = host.check_output("docker ps -a --filter label=com.docker.compose.project=demo "
                               "--filter label=com.docker.compose.service=backend --format '{{.Status}}'")
    assert states.count("(healthy)") == 2, states


def started_since(silence: dict, moment: float) -> bool:
    return datetime.fromisoformat(silence["startsAt"].replace("Z", "+00:00")).timestamp() >= moment - 5


def test_planned_upgrade_runbook_under_load(host, address, tmp_path):
    began = time.time()
    with HttpLoad(address) as load:
        run, records, elapsed = run_runbook(tmp_path, "planned-upgrade", {
            "runbook_use_monitoring": True, "runbook_upgrade_services": {"backend": "2.0"},
            "runbook_upgrade_bake_s": 4, "runbook_upgrade_bake_paths": ["/api/version"],
            "runbook_upgrade_drain_timeout": 10})
    record("planned_upgrade", {"run_s": round(elapsed, 2), "requests": load.total, "failed": load.failed,
                               "errors": load.errors[:5], "errors_by_step": errors_by_step(load, records),
                               "steps": [[r["step"], r["status"], r["duration_s"]] for r in records]})
    assert load.failed == 0, load.errors[:10]
    assert load.total > 100
    assert served_version(address) == "2.0"
    by_step = {r["step"]: r for r in records}
    for step in ("silence-alerts", "backup-data", "upgrade", "expire-silence"):
        assert by_step[step]["changed"] is True, by_step[step]
    made = [s for s in silences(host) if s["comment"].startswith("planned-upgrade of demo") and started_since(s, began)]
    assert len(made) == 1 and made[0]["status"]["state"] == "expired"
    assert {m["name"]: m["value"] for m in made[0]["matchers"]} == {
        "runbook_id": "service-down|high-error-rate|high-latency"}
    backups = host.check_output("ls /var/backups/opsbook/redis")
    assert re.search(r"\d{8}T\d{6}Z", backups), backups


def test_a_converge_after_the_upgrade_keeps_the_journals_release_without_a_failed_request(host, address):
    assert served_version(address) == "2.0"
    compose_before = host.file("/opt/demo/compose.yaml").content_string
    assert scenario_vars()["compose_app_services"]["backend"]["tag"] == "1.0"  # the inventory was not updated
    with HttpLoad(address) as load:
        output = converge_site()
    record("converge_after_upgrade", {"requests": load.total, "failed": load.failed, "errors": load.errors[:5],
                                      "longest_gap_s": round(load.longest_gap, 2), "changed": changed_in_recap(output)})
    assert load.failed == 0, load.errors[:10]
    assert load.total > 20
    assert served_version(address) == "2.0"
    assert changed_in_recap(output) == [0], output[-4000:]
    said = flat(output)
    assert "the inventory says registry:5000/demo-backend:1.0, the journal's current release" in said, said[-4000:]
    assert "runs registry:5000/demo-backend:2.0. Going back needs compose_app_allow_downgrade: true" in said
    assert host.file("/opt/demo/compose.yaml").content_string == compose_before


def test_rollback_runbook_under_load(host, address, tmp_path):
    with HttpLoad(address) as load:
        _run, records, elapsed = run_runbook(tmp_path, "rollback", {
            "runbook_use_monitoring": True, "runbook_upgrade_bake_s": 4,
            "runbook_upgrade_bake_paths": ["/api/version"], "runbook_upgrade_drain_timeout": 10})
    record("rollback", {"run_s": round(elapsed, 2), "requests": load.total, "failed": load.failed,
                        "errors": load.errors[:5], "errors_by_step": errors_by_step(load, records),
                        "steps": [[r["step"], r["status"], r["duration_s"]] for r in records]})
    assert load.failed == 0, load.errors[:10]
    assert served_version(address) == "1.0"
    assert {r["step"]: r for r in records}["roll-back"]["changed"] is True
    live = [s for s in silences(host) if s["comment"].startswith("rollback of demo") and s["status"]["state"] == "active"]
    assert live == []


def test_a_converge_with_a_new_tag_moves_the_web_service_without_a_failed_request(host, address):
    assert served_version(address) == "1.0"
    services = json.loads(json.dumps(scenario_vars()["compose_app_services"]))
    services["backend"]["tag"] = "2.0"
    extravars = json.dumps({"compose_app_services": services, "compose_app_rolling_upgrade": {
        "bake_s": 4, "bake_paths": ["/api/version"], "drain_timeout": 10}})
    redis_before = host.check_output("docker inspect --format '{{.Id}}' demo-redis-1")
    with HttpLoad(address) as load:
        output = converge_site("-e", extravars)
    record("converge_upgrade", {"requests": load.total, "failed": load.failed, "errors": load.errors[:5],
                                "longest_gap_s": round(load.longest_gap, 2), "seen": load.seen})
    assert load.failed == 0, load.errors[:10]
    assert served_version(address) == "2.0"
    assert "Move the running web services to their new image without downtime" in output
    assert host.check_output("docker inspect --format '{{.Id}}' demo-redis-1") == redis_before
    assert "image: registry:5000/demo-backend:2.0" in host.file("/opt/demo/compose.yaml").content_string
    again = converge_site("-e", extravars)
    assert changed_in_recap(again) == [0], again[-4000:]
