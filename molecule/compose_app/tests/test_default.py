"""compose_app on the four stack profiles: healthy, secret-safe, journaled, clear on failure, data kept on stop."""
import json
import os
import re
import subprocess
import time

import pytest
import yaml

PROJECT_DIR = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.getcwd())
SCENARIO_DIR = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", os.path.dirname(os.path.dirname(__file__)))
# compose_app alone (docker_engine is converged once by converge.yml and checked by molecule's idempotence step).
DEPLOY = os.path.join(SCENARIO_DIR, "deploy.yml")
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
# Instance names carry OPSBOOK_MOLECULE_PREFIX (molecule.yml), so parallel checkouts do not collide.
HOST = os.environ.get("OPSBOOK_MOLECULE_PREFIX", "opsbook") + "-ca-"
# "adopted": an operator's own docker-compose.yml adopted unchanged (issue 17; more of it in test_adopt.py).
PROFILES = {HOST + p: p for p in ("agentchat", "astron-agent", "helloagents", "heartrule", "adopted")}


def profile_vars(profile):
    out = {}
    base = os.path.join(PROJECT_DIR, "inventories", profile, "group_vars", "all")
    for name in sorted(os.listdir(base)):
        with open(os.path.join(base, name)) as fh:
            out.update(yaml.safe_load(fh) or {})
    return out


def service_names(profile, cfg):
    """The project's services: the inventory's, or those of the adopted compose files."""
    if not cfg.get("compose_app_compose_files"):
        return set(cfg["compose_app_services"])
    names = set()
    for entry in cfg["compose_app_compose_files"]:
        src = entry["src"].replace("{{ opsbook_adopted_files }}", os.path.join(PROJECT_DIR, "inventories", profile, "files"))
        with open(src) as fh:
            names |= set(yaml.safe_load(fh)["services"])
    return names


def playbook(path, limit, *extra, expect_rc=0):
    argv = ["ansible-playbook", "-i", INVENTORY, "--limit", limit, path, *extra]
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=PROJECT_DIR, timeout=900)
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    if expect_rc is not None:
        assert proc.returncode == expect_rc, f"{' '.join(argv)} exited {proc.returncode}:\n{output[-4000:]}"
    return output, elapsed


@pytest.fixture(scope="module")
def profile(host):
    return PROFILES[host.backend.get_hostname()]


@pytest.fixture(scope="module")
def cfg(profile):
    return profile_vars(profile)


def containers(host, project):
    out = host.check_output(
        "docker ps -a --filter label=com.docker.compose.project=%s --format '{{.Names}}'" % project)
    return [line for line in out.splitlines() if line]


def test_every_container_is_running_and_healthy(host, profile, cfg):
    project = cfg["compose_app_project"]
    names = containers(host, project)
    hints = cfg["compose_app_services"]
    expected = sum(int((hints.get(name) or {}).get("replicas", 1)) for name in service_names(profile, cfg))
    assert len(names) == expected
    for name in names:
        state = json.loads(host.check_output("docker inspect -f '{{json .State}}' %s" % name))
        assert state["Status"] == "running", name
        assert state["Health"]["Status"] == "healthy", name


def test_web_replicas_are_published_on_loopback_only(host, cfg):
    project = cfg["compose_app_project"]
    for name in containers(host, project):
        ports = json.loads(host.check_output("docker inspect -f '{{json .NetworkSettings.Ports}}' %s" % name))
        for bindings in ports.values():
            for binding in bindings or []:
                assert binding["HostIp"] == "127.0.0.1", (name, binding)


def test_env_file_is_private_and_compose_file_holds_no_secret(host, cfg):
    project_dir = "/opt/%s" % cfg["compose_app_project"]
    env = host.file(project_dir + "/.env")
    assert env.mode == 0o600 and env.user == "root" and env.group == "root"
    compose = host.file(project_dir + "/compose.yaml").content_string
    for value in cfg["compose_app_secrets"].values():
        assert value not in compose
        assert value in env.content_string


def test_release_journal_names_images_by_digest(host, profile, cfg):
    project = cfg["compose_app_project"]
    releases = host.file("/var/lib/opsbook/%s/releases" % project)
    assert releases.is_directory
    records = [json.loads(host.file(f"{releases.path}/{n}").content_string) for n in releases.listdir()]
    ok = [r for r in records if r["status"] == "succeeded"]
    assert ok, records
    newest = max(ok, key=lambda r: r["created_ts"])
    assert set(newest["services"]) == service_names(profile, cfg)
    for svc in newest["services"].values():
        if svc["image"].startswith("opsbook-build/"):
            # Built on the host from the operator's source (compose_app_build): tagged with its revision, no
            # registry digest.
            assert re.match(r"^opsbook-build/[a-z-]+:[0-9a-f]{12}$", svc["image"]) and svc["image_id"], svc
            continue
        assert re.match(r"^registry:5000/[a-z-]+@sha256:[0-9a-f]{64}$", svc["digest"]), svc


def test_second_converge_changes_nothing_and_prints_no_secret(host):
    if host.backend.get_hostname() != HOST + "agentchat":
        pytest.skip("one run covers every host")
    output, _ = playbook(DEPLOY, "all", "-vvv")
    recap = re.findall(r"^(%s\S+)\s+: ok=\d+\s+changed=(\d+)" % re.escape(HOST), output, re.M)
    assert sorted(recap) == sorted((h, "0") for h in PROFILES), recap
    for profile in PROFILES.values():
        for value in profile_vars(profile)["compose_app_secrets"].values():
            assert value not in output, f"a secret of {profile} appears in the -vvv output"


def test_weak_secret_is_refused_and_changes_nothing(host, cfg):
    if host.backend.get_hostname() != HOST + "helloagents":
        pytest.skip("run once")
    before = host.file("/opt/helloagents/.env").content_string
    name = next(iter(cfg["compose_app_secrets"]))
    output, _ = playbook(DEPLOY, host.backend.get_hostname(),
                         "-e", json.dumps({"compose_app_secrets": {name: "changeme"}}), expect_rc=2)
    assert f"compose_app_secrets {name}: empty, shorter than" in output
    assert host.file("/opt/helloagents/.env").content_string == before


def test_a_tag_the_registry_does_not_have_fails_on_the_pull_and_changes_nothing(host, cfg):
    if host.backend.get_hostname() != HOST + "helloagents":
        pytest.skip("run once")
    before = host.file("/opt/helloagents/compose.yaml").content_string
    running = host.check_output("docker ps --filter label=com.docker.compose.project=helloagents "
                                "--format '{{.Names}} {{.Image}} {{.ID}}' | sort")
    services = json.loads(json.dumps(cfg["compose_app_services"]))
    services["backend"]["tag"] = "9.9"
    output, elapsed = playbook(DEPLOY, host.backend.get_hostname(),
                               "-e", json.dumps({"compose_app_services": services}), expect_rc=2)
    assert "cannot pull registry:5000/demo-backend:9.9 for backend:" in output
    assert re.search(r"manifest (for \S+ )?(unknown|not found)", output), output[-3000:]
    assert "not healthy within" not in output
    assert elapsed < 300, elapsed  # it fails on the pull, not after compose_app_wait_timeout (300 s)
    assert host.file("/opt/helloagents/compose.yaml").content_string == before
    assert host.check_output("docker ps --filter label=com.docker.compose.project=helloagents "
                             "--format '{{.Names}} {{.Image}} {{.ID}}' | sort") == running


def test_the_deploy_waits_for_the_project_lock_and_names_its_holder(host, cfg):
    if host.backend.get_hostname() != HOST + "helloagents":
        pytest.skip("run once")
    # Another writer holds the project lock, the way a role or a runbook step holds it (opsbook.stack.project_lock).
    # Its lease (hold_max) outlasts the deploy's first tasks on a loaded machine; the test releases it.
    argv = ["ansible", "-i", INVENTORY, host.backend.get_hostname(), "-m", "opsbook.stack.project_lock",
            "-a", "project=helloagents operation=rolling_upgrade hold_max=900", "-o"]
    held = subprocess.run(argv, capture_output=True, text=True, cwd=PROJECT_DIR, timeout=300, check=True).stdout
    token = re.search(r'"token": "([0-9a-f]+)"', held).group(1)
    pid = re.search(r'"pid": (\d+)', held).group(1)
    output, elapsed = playbook(DEPLOY, host.backend.get_hostname(),
                               "-e", "compose_app_lock_timeout=4", expect_rc=2)
    assert "project helloagents is locked by rolling_upgrade (pid %s" % pid in output
    assert "this compose_app deploy of helloagents waited 4 s (lock_timeout) and changed nothing" in output
    assert 4 <= elapsed < 300, elapsed
    # Once the other writer is done, the deploy goes through (and changes nothing: it was converged already).
    release = ["ansible", "-i", INVENTORY, host.backend.get_hostname(), "-m", "opsbook.stack.project_lock",
               "-a", "project=helloagents state=released token=%s" % token, "-o"]
    subprocess.run(release, capture_output=True, text=True, cwd=PROJECT_DIR, timeout=300, check=True)
    output, _ = playbook(DEPLOY, host.backend.get_hostname())
    assert re.search(r"helloagents\s+: ok=\d+\s+changed=0", output), output[-3000:]


def test_unhealthy_service_fails_fast_naming_it_with_logs(host, cfg):
    if host.backend.get_hostname() != HOST + "helloagents":
        pytest.skip("run once")
    broken = {
        "compose_app_project": "brokenapp",
        "compose_app_wait_timeout": 90,
        "compose_app_secrets": {},
        "compose_app_services": {"api": {"image": "registry:5000/demo-backend", "tag": "3.0", "preset": "web"}},
    }
    try:
        output, elapsed = playbook(DEPLOY, host.backend.get_hostname(),
                                   "-e", json.dumps(broken), expect_rc=2)
        assert "brokenapp: not healthy within 90 s" in output
        assert "unhealthy: api" in output
        assert "service api, container brokenapp-api-1" in output
        assert "last log lines:" in output and "GET /health" in output
        assert elapsed < 90 + 60, elapsed
        records = host.check_output("cat /var/lib/opsbook/brokenapp/releases/*.json")
        assert '"status": "failed"' in records
    finally:
        host.run("cd /opt/brokenapp && docker compose down -v")


def test_stop_keeps_data_and_start_finds_it(host, cfg):
    if host.backend.get_hostname() != HOST + "agentchat":
        pytest.skip("agentchat has MariaDB")
    limit = host.backend.get_hostname()
    secret = cfg["compose_app_secrets"]["MARIADB_ROOT_PASSWORD"]
    sql = "docker exec -e MYSQL_PWD=%s agentchat-mysql-1 mariadb -uroot agentchat -e %%s" % secret
    host.check_output(sql % "'CREATE TABLE IF NOT EXISTS kept (id INT PRIMARY KEY); REPLACE INTO kept VALUES (1),(2),(3)'")

    project = ("-e", "compose_app_project=agentchat")
    output, _ = playbook(os.path.join(PROJECT_DIR, "playbooks/stop.yml"), limit, *project,
                         "-e", "opsbook_purge_volumes=true", expect_rc=2)
    assert "also set opsbook_purge_confirm=agentchat" in output
    assert len(containers(host, "agentchat")) == 5

    playbook(os.path.join(PROJECT_DIR, "playbooks/stop.yml"), limit, *project)
    assert containers(host, "agentchat") == []
    assert "agentchat_mysql-data" in host.check_output("docker volume ls -q")

    _, elapsed = playbook(os.path.join(PROJECT_DIR, "playbooks/start.yml"), limit, *project)
    rows = host.check_output(sql % "'SELECT COUNT(*) FROM kept'")
    assert rows.split()[-1] == "3"
    print(f"start.yml to healthy: {elapsed:.1f} s")


# --------------------------------------------------------------------------------------------------------
# Each profile's routes through Nginx (issue 16, item 1): which service answers each path, every stream to its
# end, HeartRule's WebSocket handshake. The demo backend names the service it plays in X-Service (SERVICE_NAME);
# the demo frontend is recognised by its page.
# --------------------------------------------------------------------------------------------------------

FRONTEND = "frontend page"
ROUTES = {
    "agentchat": [("/api/version", "backend"), ("/health", "backend"), ("/", FRONTEND)],
    "astron-agent": [("/console-api/apps", "console-hub"), ("/", FRONTEND)],
    "helloagents": [("/api/version", "backend"), ("/health", "backend"), ("/", FRONTEND)],
    "heartrule": [("/api/version", "api"), ("/health", "api"), ("/", "api")],
    "adopted": [("/api/version", "console-hub"), ("/", FRONTEND)],
}
STREAMS = {
    "agentchat": [("/sse", "backend")],
    "astron-agent": [("/workflow/v1/chat/completions", "core-workflow"), ("/console-api/chat-message/", "console-hub")],
    "helloagents": [("/sse", "backend")],
    "heartrule": [("/api/chat/stream", "api")],
    "adopted": [("/workflow/v1/chat/completions", "core-workflow"), ("/sse", "console-hub")],
}
# RFC 6455's example key and the accept value it must give.
WS_KEY, WS_ACCEPT = "dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def through_nginx(host, path, *curl):
    """Status line, headers (lower-case names) and body of a GET through the host's Nginx."""
    out = host.run("curl -sS -i --max-time 20 %s 'http://127.0.0.1%s'" % (" ".join(curl), path))
    assert out.rc == 0, (path, out.stderr)
    head, _, body = out.stdout.replace("\r\n", "\n").partition("\n\n")
    status, *lines = head.split("\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines if ":" in line)}
    return status, headers, body


def test_every_route_reaches_its_service_through_nginx(host, profile):
    for path, expected in ROUTES[profile]:
        status, headers, body = through_nginx(host, path)
        if expected == FRONTEND:
            assert " 200" in status and "<h1>opsbook demo</h1>" in body, (path, status, body[:300])
        else:
            # The service's own answer (a 404 of the demo app for a path it does not serve is still its answer).
            assert headers.get("x-service") == expected, (path, status, headers, body[:300])
            assert " 502" not in status and " 504" not in status, (path, status)


def test_every_stream_runs_to_its_end_through_nginx_unbuffered(host, profile):
    for path, expected in STREAMS[profile]:
        status, headers, body = through_nginx(host, path + "?events=5&interval=0.2", "-N")
        assert " 200" in status and headers.get("x-service") == expected, (path, status, headers)
        assert headers.get("content-type", "").startswith("text/event-stream"), headers
        assert headers.get("x-accel-buffering") == "no", headers  # a streaming location, not an ordinary one
        assert body.count("data:") >= 5 and "event: end" in body, (path, body)


def test_the_heartrule_websocket_route_completes_the_handshake(host, profile):
    if profile != "heartrule":
        pytest.skip("HeartRule's route (the others have none)")
    out = host.run(
        "curl -sS -i -N --http1.1 --max-time 3 -H 'Connection: Upgrade' -H 'Upgrade: websocket' "
        "-H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: %s' http://127.0.0.1/ws/echo" % WS_KEY)
    # curl has no WebSocket client here: it prints the handshake and waits until --max-time (rc 28).
    assert out.stdout.startswith("HTTP/1.1 101"), (out.rc, out.stdout[:500], out.stderr)
    assert "Sec-WebSocket-Accept: %s" % WS_ACCEPT in out.stdout.replace("sec-websocket-accept", "Sec-WebSocket-Accept")


def test_the_profiles_application_logs_rotate_by_size_on_an_hourly_timer(host, cfg):
    """Issue 16, item 5: the profile's log paths are in the nginx role's logrotate file, which the host's own
    logrotate accepts, and logrotate.timer runs hourly so a size limit acts within the hour."""
    if not cfg.get("nginx_logrotate_app_logs"):
        pytest.skip("this profile names no application logs")
    conf = host.file("/etc/logrotate.d/nginx").content_string
    for entry in cfg["nginx_logrotate_app_logs"]:
        assert entry["path"] in conf, entry
    assert host.run("logrotate -d /etc/logrotate.d/nginx").rc == 0
    calendar = host.check_output("systemctl show logrotate.timer -p TimersCalendar")
    assert "OnCalendar=*-*-* *:00:00" in calendar, calendar
    assert host.service("logrotate.timer").is_running
