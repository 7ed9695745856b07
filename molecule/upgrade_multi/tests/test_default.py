"""playbooks/upgrade.yml and rollback.yml over two app hosts behind an edge Nginx, under load through the edge.

The tests run once each (no `host` fixture) and in file order. Figures go to build/molecule-upgrade-multi-figures.json.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "support"))
from http_load import HttpLoad  # noqa: E402  pylint: disable=wrong-import-position,import-error

PROJECT_DIR = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
FIGURES = PROJECT_DIR / "build" / "molecule-upgrade-multi-figures.json"
# Instance names carry the checkout's prefix (.config/molecule/config.yml), like the platforms of molecule.yml.
PREFIX = os.environ.get("OPSBOOK_MOLECULE_PREFIX") or "opsbook"
APP1, APP2, LB = PREFIX + "-um-app1", PREFIX + "-um-app2", PREFIX + "-um-lb"
APPS = (APP1, APP2)


def record(name: str, value) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data[name] = value
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print("FIGURE %s = %s" % (name, json.dumps(value)))


def inventory() -> str:
    return str(Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "inventory")


def node(name: str):
    return testinfra.get_host("ansible://%s?ansible_inventory=%s" % (name, inventory()))


@pytest.fixture(scope="module")
def edge() -> str:
    lb = node(LB)
    device = lb.check_output("ip -4 -o route show default").split(" dev ")[1].split()[0]
    out = lb.check_output("ip -4 -o addr show dev %s scope global" % device)
    return re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out).group(1)


def playbook(name: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ansible-playbook", "-i", inventory(), str(PROJECT_DIR / "playbooks" / name), *extra],
                          capture_output=True, text=True, timeout=900, check=False)


def versions(name: str) -> list[str]:
    out = node(name).check_output("docker ps --filter label=com.docker.compose.service=backend --format '{{.Image}}'")
    return sorted(line.rsplit(":", 1)[1] for line in out.split())


def upstream_matches_containers(name: str) -> bool:
    host = node(name)
    # The bridge addresses the resolver serves (docs/routing.md).
    listed = sorted(re.findall(r"^(\d+\.\d+\.\d+\.\d+) ", host.file("/etc/nginx/upstreams.d/hosts.d/demo_backend")
                               .content_string, re.M))
    ids = host.check_output("docker ps -aq --filter label=com.docker.compose.service=backend").split()
    ports = sorted(host.check_output("docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' %s"
                                     % cid).strip() for cid in ids)
    return listed == ports


def journal(name: str) -> list[dict]:
    host = node(name)
    files = host.check_output("ls /var/lib/opsbook/demo/releases").split()
    records = [json.loads(host.file("/var/lib/opsbook/demo/releases/" + f).content_string) for f in files]
    return sorted(records, key=lambda r: (r["created_ts"], r["id"]))


def test_edge_reaches_both_app_hosts(edge):
    assert all(versions(app) == ["1.0", "1.0"] for app in APPS)
    hostnames = set()
    for _ in range(20):
        conn = http.client.HTTPConnection(edge, 80, timeout=5)
        conn.request("GET", "/api/version")
        hostnames.add(json.loads(conn.getresponse().read())["hostname"])
        conn.close()
    assert len(hostnames) == 4  # two replicas on each app host


def test_second_host_fails_and_the_first_is_rolled_back(edge):
    # The fault: app2's "2.0" is really the broken 3.0 (a bad image cached on one host).
    app2 = node(APP2)
    app2.check_output("docker pull -q registry:5000/demo-backend:3.0 && "
                      "docker tag registry:5000/demo-backend:3.0 registry:5000/demo-backend:2.0")
    started = time.monotonic()
    with HttpLoad(edge) as load:
        run = playbook("upgrade.yml", "-e", json.dumps({"upgrade_services": {"backend": "2.0"}}))
    figures = {**load.figures(), "seconds": round(time.monotonic() - started, 1)}
    record("second_host_fails_first_rolled_back", figures)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    assert "Roll back every host upgraded in this run" in output
    assert re.search(r"%s\s+: ok=\d+\s+changed=[1-9]" % APP1, output), output[-2000:]
    assert load.failed == 0, load.errors[:10]
    assert load.seen.get("2.0"), "app1 never served 2.0: the rollback proved nothing"
    for app in APPS:
        assert versions(app) == ["1.0", "1.0"], app
        assert upstream_matches_containers(app), app


def test_the_rollback_playbook_rerun_right_after_a_rollback_changes_nothing(edge):
    before = {app: (journal(app), versions(app)) for app in APPS}
    with HttpLoad(edge) as load:
        again = playbook("rollback.yml")
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    assert load.failed == 0, load.errors[:10]
    for app in APPS:
        assert re.search(r"%s\s+: ok=\d+\s+changed=0\s" % app, output), output[-2000:]
        assert (journal(app), versions(app)) == before[app] and versions(app) == ["1.0", "1.0"], app
        assert upstream_matches_containers(app), app
    kinds = [(r["kind"], r["status"]) for r in journal(APP1)]
    # The upgrade app1 was rolled back from is `rolled_back` (issue 14: it stayed `succeeded` and was the next
    # rollback's target, the bad version again).
    assert kinds[-2:] == [("upgrade", "rolled_back"), ("rollback", "succeeded")]
    assert journal(APP2)[-1]["status"] == "failed"


def test_clean_upgrade_of_both_then_rollback(edge):
    app2 = node(APP2)
    app2.check_output("docker rmi registry:5000/demo-backend:2.0 && docker pull -q registry:5000/demo-backend:2.0")
    with HttpLoad(edge) as load:
        up = playbook("upgrade.yml", "-e", json.dumps({"upgrade_services": {"backend": "2.0"}}))
    record("upgrade_both", load.figures())
    assert up.returncode == 0, (up.stdout + up.stderr)[-3000:]
    assert load.failed == 0, load.errors[:10]
    assert all(versions(app) == ["2.0", "2.0"] for app in APPS)
    with HttpLoad(edge) as load:
        back = playbook("rollback.yml")
    record("rollback_both", load.figures())
    assert back.returncode == 0, (back.stdout + back.stderr)[-3000:]
    assert load.failed == 0, load.errors[:10]
    for app in APPS:
        assert versions(app) == ["1.0", "1.0"], app
        assert upstream_matches_containers(app), app
