"""An operator's own docker-compose.yml adopted unchanged (issue 17), on the scenario's "adopted" host.

The file (inventories/adopted/files/docker-compose.yml) is shaped like astron-agent's: container_name on every
service, fixed host ports, a `build:` service, depends_on with service_healthy, health checks with and without
interval, an init script bind-mounted into /docker-entrypoint-initdb.d, named volumes, restart: unless-stopped,
variables with defaults and passwords written inline. The generic checks of test_default.py run on this host
too (healthy, loopback-only ports, secrets only in .env, the journal, changed=0, routes and streams).

Here: the file's sha256 stays what the operator gave through deploy, upgrade and rollback; `docker compose` in
the project directory runs the pair; the moved secrets are the ones in effect; the report in check mode; what is
refused changes nothing; a rolling upgrade and a rollback under real clients lose no request; a backup of the
database and its restore drill. Figures go to build/molecule-adopt.json.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from test_default import DEPLOY, HOST, INVENTORY, PROJECT_DIR, playbook, profile_vars

sys.path.insert(0, os.path.join(PROJECT_DIR, "tests", "support"))
import real_clients  # noqa: E402

ADOPTED = HOST + "adopted"
PROJECT = "astron"
ROOT = "/opt/astron"
GIVEN = Path(PROJECT_DIR) / "inventories" / "adopted" / "files" / "docker-compose.yml"
FIGURES = Path(PROJECT_DIR) / "build" / "molecule-adopt.json"
OPTIONS = {"bake_s": 3, "bake_rate": 10, "bake_min_requests": 10, "bake_paths": ["/api/version"]}
WEB = ("console-frontend", "console-hub", "core-workflow")


def record(name, value):
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data[name] = value
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print("FIGURE %s = %s" % (name, json.dumps(value)))


@pytest.fixture(scope="module", autouse=True)
def adopted_only(host):
    if host.backend.get_hostname() != ADOPTED:
        pytest.skip("the adopted project runs on %s" % ADOPTED)


@pytest.fixture(scope="module")
def cfg():
    return profile_vars("adopted")


@pytest.fixture(scope="module")
def address(host):
    device = host.check_output("ip -4 -o route show default").split(" dev ")[1].split()[0]
    out = host.check_output("ip -4 -o addr show dev %s scope global" % device)
    return re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out).group(1)


def given_sha():
    return hashlib.sha256(GIVEN.read_bytes()).hexdigest()


def host_sha(host):
    return host.check_output("sha256sum %s/docker-compose.yml" % ROOT).split()[0]


def merged(host, interpolate=False):
    flag = "" if interpolate else " --no-interpolate"
    return json.loads(host.check_output("cd %s && docker compose config --format json%s" % (ROOT, flag)))


def maria(host, password, sql):
    return host.run("docker exec -e MYSQL_PWD=%s astron-mysql mariadb -uroot -N -e %s" % (password, json.dumps(sql)))


def module(host, name, args):
    """One module run on the adopted host through ansible-playbook (the result of its task)."""
    play = [{"hosts": ADOPTED, "gather_facts": False, "tasks": [{"name": "run", name: args}]}]
    path = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/tmp")) / ("adopt-%s.yml" % name.rsplit(".", 1)[-1])
    path.write_text(json.dumps(play))
    done = subprocess.run(
        ["ansible-playbook", "-i", INVENTORY, "--limit", ADOPTED, str(path)],
        capture_output=True, text=True, cwd=PROJECT_DIR, timeout=900, check=False,
        env=dict(os.environ, ANSIBLE_STDOUT_CALLBACK="json"),
    )
    try:
        data = json.loads(done.stdout[done.stdout.index("{"):])
    except ValueError:
        raise AssertionError("no JSON from ansible-playbook: %s %s" % (done.stdout[-2000:], done.stderr[-2000:]))
    return next(iter(data["plays"][0]["tasks"][0]["hosts"].values()))


def served(address, path="/api/version"):
    import http.client

    conn = http.client.HTTPConnection(address, 80, timeout=5)
    conn.request("GET", path)
    body = json.loads(conn.getresponse().read())
    conn.close()
    return body["version"]


def test_the_operators_file_is_byte_for_byte_what_was_given(host):
    record("operator_file_sha256", {"given": given_sha(), "after_deploy": host_sha(host)})
    assert host_sha(host) == given_sha()
    env = host.file(ROOT + "/.env").content_string
    assert "COMPOSE_FILE=%s/docker-compose.yml:%s/compose.yaml" % (ROOT, ROOT) in env


def test_docker_compose_in_the_project_directory_runs_the_pair(host):
    doc = merged(host)
    services = doc["services"]
    assert set(services) == {"mysql", "redis", "minio", "core-workflow", "console-hub", "console-frontend"}
    for name in WEB:
        svc = services[name]
        assert "container_name" not in svc, (name, svc)
        assert [(p.get("host_ip"), p.get("published")) for p in svc["ports"]] == [("127.0.0.1", None)], svc["ports"]
        assert svc["labels"]["io.opsbook.role"] == "web" and svc["labels"]["io.opsbook.port"], svc["labels"]
        assert "healthcheck" in svc, name
    # Services that never scale keep their name and their host port, on loopback only.
    assert services["mysql"]["container_name"] == "astron-mysql"
    assert [(p["host_ip"], p["published"]) for p in services["redis"]["ports"]] == [("127.0.0.1", "6379")]
    assert "healthcheck" in services["redis"]  # from the preset: the file has none
    # The build service runs the image built on the host from the operator's source, never `build:`.
    assert "build" not in services["core-workflow"]
    assert re.match(r"^opsbook-build/astron-core-workflow:[0-9a-f]{12}$", services["core-workflow"]["image"])
    # Untouched: depends_on with service_healthy, restart, the init script mount, named volumes, json-file logs.
    assert services["core-workflow"]["depends_on"]["mysql"]["condition"] == "service_healthy"
    assert services["console-hub"]["restart"] == "unless-stopped"
    assert any(v["target"] == "/docker-entrypoint-initdb.d/init.sql" for v in services["mysql"]["volumes"])
    assert {"redis-data", "minio-data"} <= set(doc["volumes"])
    for name, svc in services.items():
        assert svc["logging"]["driver"] == "json-file" and svc["logging"]["options"]["max-size"], name
    # The inline passwords are replaced by references to the 0600 .env.
    env = services["mysql"]["environment"]
    if isinstance(env, list):  # `config --no-interpolate` may print KEY=VALUE lines
        env = dict(item.split("=", 1) for item in env)
    assert env["MYSQL_ROOT_PASSWORD"].startswith("${MYSQL_ROOT_PASSWORD"), "the inline value is still in use"


def test_the_moved_secret_is_in_effect_and_the_init_script_ran(host, cfg):
    secret = cfg["compose_app_secrets"]["MYSQL_ROOT_PASSWORD"]
    out = maria(host, secret, "SELECT name FROM astron_console.agent WHERE id = 1")
    assert out.rc == 0 and out.stdout.strip() == "adopted-init-script", (out.stdout, out.stderr)
    assert maria(host, "123456", "SELECT 1").rc != 0, "the file's inline password still opens the database"


def test_check_mode_prints_the_adoption_report_and_changes_nothing(host):
    output, _ = playbook(DEPLOY, ADOPTED, "--check", "--diff")
    assert re.search(r"%s\s+: ok=\d+\s+changed=0" % re.escape(ADOPTED), output), output[-3000:]
    start = output.index("Report the adoption")
    text = " ".join(output[start : output.index("TASK [", start + 30)].split())  # the callback wraps long lines
    record("adoption_report_check_mode", text)
    assert "core-workflow: container_name astron-core-workflow removed" in text, text
    assert "console-hub: port 8080" in text and "127.0.0.1" in text, text
    assert "mysql: MYSQL_ROOT_PASSWORD moved to the 0600 .env" in text, text
    assert "redis: port 6379" in text, text
    assert host_sha(host) == given_sha()


def test_an_inline_password_without_a_secret_is_refused_and_changes_nothing(host, cfg):
    before = host.file(ROOT + "/compose.yaml").content_string
    running = host.check_output("docker ps --filter label=com.docker.compose.project=astron --format '{{.ID}}' | sort")
    secrets = {k: v for k, v in cfg["compose_app_secrets"].items() if k != "MINIO_ROOT_PASSWORD"}
    output, _ = playbook(DEPLOY, ADOPTED, "-e", json.dumps({"compose_app_secrets": secrets}), expect_rc=2)
    assert "MINIO_ROOT_PASSWORD is written inline in docker-compose.yml line" in output, output[-3000:]
    assert "compose_app_secrets.MINIO_ROOT_PASSWORD" in output
    assert "minioadmin" not in output  # the refusal names the variable, never its value
    assert host.file(ROOT + "/compose.yaml").content_string == before
    assert host.check_output("docker ps --filter label=com.docker.compose.project=astron --format '{{.ID}}' | sort") == running


def test_a_build_service_without_a_source_is_refused(host):
    output, _ = playbook(DEPLOY, ADOPTED, "-e", '{"compose_app_build": {}}', expect_rc=2)
    assert "core-workflow has `build:`" in output and "compose_app_build.core-workflow" in output, output[-3000:]
    assert "source: git" in output and "source: image" in output


def under_real_clients(host, address, action):
    """`action` under wrk, hey, hey -disable-keepalive and the own keep-alive client, with ten SSE streams and
    three WebSocket sessions (5-15 s) opened once the new containers run beside the old ones."""
    missing = real_clients.missing_tools()
    assert not missing, "install %s on the controller (apt-get install -y wrk hey)" % " ".join(missing)
    count = "docker ps -q --filter label=com.docker.compose.project=astron --filter label=com.docker.compose.service=console-hub | wc -l"
    clients = real_clients.run_clients(address, rate_scale=0.5)
    time.sleep(2)
    before = int(host.check_output(count))
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(result=action()), daemon=True)
    began = time.monotonic()
    worker.start()
    deadline = time.monotonic() + 180
    while worker.is_alive() and int(host.check_output(count)) <= before and time.monotonic() < deadline:
        time.sleep(0.3)
    sessions = real_clients.open_sessions(address, streams=10, sessions=3, shortest_s=5, longest_s=15)
    worker.join(900)
    wall = time.monotonic() - began
    seen = real_clients.session_figures(sessions, timeout_s=90)
    time.sleep(1)
    figures = {name: f.to_dict() for name, f in real_clients.stop_clients(clients).items()}
    return outcome.get("result") or {}, {"clients": figures, "sessions": seen, "wall_s": round(wall, 2)}


def assert_nothing_lost(result, figures):
    assert not result.get("failed"), result.get("msg")
    for name, client in figures["clients"].items():
        assert client["requests"] > 0 and client["failed"] == 0, (name, client)
    for kind, seen in figures["sessions"].items():
        assert seen["opened"] > 0 and seen["cut"] == 0, (kind, seen)


def test_upgrade_then_rollback_under_real_clients_edit_only_the_override(host, address):
    if served(address) != "1.0":  # a verifier run again on the same hosts
        module(host, "opsbook.stack.rolling_upgrade", {"project": PROJECT, "services": {"console-hub": "1.0"}, **OPTIONS})
    assert served(address) == "1.0"
    override_before = host.file(ROOT + "/compose.yaml").content_string
    result, figures = under_real_clients(
        host, address,
        lambda: module(host, "opsbook.stack.rolling_upgrade",
                       {"project": PROJECT, "services": {"console-hub": "2.0"}, **OPTIONS}))
    record("upgrade", figures)
    assert_nothing_lost(result, figures)
    assert served(address) == "2.0"
    assert host_sha(host) == given_sha()
    override = host.file(ROOT + "/compose.yaml").content_string
    assert override != override_before and "demo-backend:2.0" in override
    assert merged(host)["services"]["console-hub"]["image"].endswith("demo-backend:2.0")

    result, figures = under_real_clients(
        host, address, lambda: module(host, "opsbook.stack.rollback", {"project": PROJECT, **OPTIONS}))
    record("rollback", figures)
    assert_nothing_lost(result, figures)
    assert served(address) == "1.0"
    assert host_sha(host) == given_sha()
    assert merged(host)["services"]["console-hub"]["image"].endswith("demo-backend:1.0")
    record("operator_file_sha256_after_upgrade_and_rollback", host_sha(host))


def test_a_backup_of_the_adopted_database_and_its_restore_drill(host, cfg):
    result = module(host, "opsbook.stack.backup", {
        "component": "astron-mysql", "type": "mariadb", "container": "astron-mysql",
        "password": cfg["compose_app_secrets"]["MYSQL_ROOT_PASSWORD"], "dest": "/var/backups/opsbook-adopt",
        "drill": True,
    })
    assert not result.get("failed"), result.get("msg")
    drill = result["drill"]
    record("backup_drill", drill)
    # The drill restored the dump into a throwaway container and counted the init script's table there.
    assert "agent" in json.dumps(drill), drill


def test_a_new_git_revision_of_the_build_service_moves_it_by_rolling_upgrade(host, cfg):
    """compose_app_build from a git repository (a local one on the host: the sandbox has no git server): the image
    is tagged with the commit, and the routed web service moves to it through the rolling upgrade; back to the
    directory source afterwards (a downgrade the inventory allows)."""
    repo = "/srv/src/core-workflow"
    files = Path(PROJECT_DIR) / "inventories" / "adopted" / "files" / "core-workflow"
    host.check_output("rm -rf %s && mkdir -p %s" % (repo, repo))
    for name in ("Dockerfile", "REVISION"):
        text = (files / name).read_text() + ("from git\n" if name == "REVISION" else "")
        host.check_output("echo %s | base64 -d > %s/%s" % (base64.b64encode(text.encode()).decode(), repo, name))
    host.check_output(
        "cd %s && git init -q -b main && git -c user.name=t -c user.email=t@example.org add . "
        "&& git -c user.name=t -c user.email=t@example.org commit -qm 'revision 2'" % repo
    )
    commit = host.check_output("git -C %s rev-parse HEAD" % repo)[:12]
    build = {"core-workflow": {"source": "git", "repo": repo, "ref": "main",
                               "args": {"BASE": "registry:5000/demo-backend:1.0"}}}
    before = host.check_output("docker ps -q --filter label=com.docker.compose.service=core-workflow")
    # The bake's default path (/health through the site) reaches the frontend, not a service routed under a
    # prefix: name the service's own route.
    upgrade = {"compose_app_rolling_upgrade": {"bake_s": 3, "bake_paths": ["/workflow/v1/chat/completions?events=1&interval=0"]}}
    output, elapsed = playbook(DEPLOY, ADOPTED, "-e", json.dumps({"compose_app_build": build, **upgrade}))
    image = merged(host)["services"]["core-workflow"]["image"]
    assert image == "opsbook-build/astron-core-workflow:%s" % commit, image
    assert "Move the running web services to their new image without downtime" in output
    after = host.check_output("docker ps -q --filter label=com.docker.compose.service=core-workflow")
    assert after and after != before
    assert host.check_output("docker exec %s cat /srv/REVISION" % after.split()[0]).endswith("from git")
    assert host_sha(host) == given_sha()
    record("git_build_deploy_s", round(elapsed, 1))
    playbook(DEPLOY, ADOPTED, "-e", json.dumps({"compose_app_allow_downgrade": True, **upgrade}))
    assert merged(host)["services"]["core-workflow"]["image"] != image
