"""The monitoring stack beside the demo stack: every target up, every dashboard query runs, an endpoint-down alert
reaches Alertmanager in time and resolves, configs reload over HTTP, and broken configs never go live."""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import jinja2
import pytest
import yaml

PROJECT_DIR = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.getcwd()))
SCENARIO_DIR = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).resolve().parents[1]))
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
SCENARIO = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())["provisioner"]["inventory"]["group_vars"]["all"]
DEFAULTS = yaml.safe_load((PROJECT_DIR / "roles/monitoring/defaults/main.yml").read_text())


def role_dashboards() -> list[tuple[str, dict]]:
    """The dashboards the role writes for this scenario's profile (agentchat): the static ones, and the HTTP ones
    rendered from their templates with the role defaults and the profile's monitoring settings (Grafana cannot
    run here, so the role writes none on the host)."""
    role = PROJECT_DIR / "roles/monitoring"
    variables = {
        **yaml.safe_load((role / "defaults/main.yml").read_text()),
        **yaml.safe_load((PROJECT_DIR / "inventories/agentchat/group_vars/all/monitoring.yml").read_text()),
    }
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(role / "templates")), trim_blocks=True,
                             undefined=jinja2.StrictUndefined)  # fmt: skip
    found = [(p.name, json.loads(p.read_text())) for p in sorted((role / "files/dashboards").glob("*.json"))]
    for name in yaml.safe_load((role / "vars/main.yml").read_text())["__monitoring_http_dashboards"]:
        found.append((name, json.loads(env.get_template("grafana/dashboards/%s.json.j2" % name).render(**variables))))
    return found


DASHBOARDS = role_dashboards()
PROMETHEUS = "http://127.0.0.1:9090"
ALERTMANAGER = "http://127.0.0.1:9093"
APP_DIR = "/opt/agentchat"
# Figures for the closing note (alert latency, counts); build/ outlives the scenario's destroy step.
FIGURES = PROJECT_DIR / "build" / "monitoring-figures.json"

testinfra_hosts = ["all"]


def seconds(duration: str) -> float:
    value, unit = re.fullmatch(r"(\d+)(ms|s|m|h)", duration).groups()
    return int(value) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


SCRAPE = seconds(SCENARIO["monitoring_prometheus_scrape_interval"])
ENDPOINT_FOR = seconds(SCENARIO["monitoring_alert_endpoint_down_for"])


def record(**figures):
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data.update(figures)
    FIGURES.write_text(json.dumps(data, indent=2))
    print(json.dumps(figures))


def api(host, url, method="GET"):
    """A request made on the host itself (the APIs are published on its loopback only)."""
    script = (
        "import sys, urllib.request as u\n"
        "r = u.urlopen(u.Request(sys.argv[1], method=sys.argv[2]), timeout=15)\n"
        "sys.stdout.write(r.read().decode())"
    )
    out = host.check_output("python3 -c %s %s %s", script, url, method)
    return json.loads(out) if out.strip().startswith(("{", "[")) else out


def query(host, promql):
    from urllib.parse import quote

    return api(host, f"{PROMETHEUS}/api/v1/query?query={quote(promql)}")


def am_alerts(host, name):
    return [a for a in api(host, f"{ALERTMANAGER}/api/v2/alerts") if a["labels"].get("alertname") == name]


def playbook(*extra, expect_rc=0, tags="monitoring_configure,monitoring_service"):
    """The monitoring role alone; the install phase (directories, checker images) is done and skipped."""
    argv = ["ansible-playbook", "-i", INVENTORY, str(SCENARIO_DIR / "monitoring_only.yml"), "--tags", tags, *extra]
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=PROJECT_DIR, timeout=600)
    print(f"{' '.join(argv[4:])}: rc {proc.returncode} in {time.monotonic() - start:.1f}s")
    output = proc.stdout + proc.stderr
    if expect_rc == 0:
        assert proc.returncode == 0, output[-4000:]
    else:
        assert proc.returncode != 0, output[-4000:]
    return output


def started_at(host, container):
    return host.check_output("docker inspect -f '{{.State.StartedAt}}' %s", container)


def test_every_target_is_up(host):
    deadline = time.monotonic() + 90
    while True:
        targets = api(host, f"{PROMETHEUS}/api/v1/targets")["data"]["activeTargets"]
        down = [(t["labels"]["job"], t["labels"]["instance"], t["lastError"]) for t in targets if t["health"] != "up"]
        if not down or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not down
    jobs = sorted({t["labels"]["job"] for t in targets})
    assert jobs == [
        "alertmanager",
        "app",
        "blackbox",
        "blackbox-exporter",
        "mysqld",
        "nginx",
        "node",
        "prometheus",
        "redis",
    ]
    assert len([t for t in targets if t["labels"]["job"] == "app"]) == 2, "both backend replicas are scraped"
    probes = {r["metric"]["probe"]: r["value"][1] for r in query(host, "probe_success")["data"]["result"]}
    assert probes == {"backend-health": "1", "frontend": "1", "nginx-health": "1"}
    for metric in ("mysql_up", "redis_up", "nginx_up"):
        assert [r["value"][1] for r in query(host, metric)["data"]["result"]] == ["1"], metric
    record(targets=len(targets), jobs=len(jobs))


def test_rules_are_loaded(host):
    groups = api(host, f"{PROMETHEUS}/api/v1/rules")["data"]["groups"]
    alerts = [r for g in groups for r in g["rules"] if r["type"] == "alerting"]
    records = [r for g in groups for r in g["rules"] if r["type"] == "recording"]
    # Every alert the role's rule templates define is loaded (the names are never templated): the shared ones
    # and the scenario's platform's (agentchat), none of another platform's.
    defined = sorted(
        m.group(1)
        for path in (PROJECT_DIR / "roles/monitoring/templates/rules").glob("*.yml.j2")
        if not path.name.startswith("platform_") or path.name == "platform_agentchat.yml.j2"
        for m in re.finditer(r"^\s+- alert: (\w+)$", path.read_text(), re.M)
    )
    assert len(defined) == 40
    assert sorted(r["name"] for r in alerts) == defined
    assert all(r["health"] == "ok" for g in groups for r in g["rules"]), [
        (r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"
    ]
    record(alert_rules=len(alerts), recording_rules=len(records))


def test_prometheus_flags(host):
    flags = api(host, f"{PROMETHEUS}/api/v1/status/flags")["data"]
    assert flags["storage.tsdb.retention.time"] == DEFAULTS["monitoring_prometheus_retention"]
    assert flags["web.enable-admin-api"] == "true"
    assert flags["web.enable-lifecycle"] == "true"


def test_uis_publish_on_loopback_only(host):
    for container, port in (("monitoring-prometheus-1", "9090/tcp"), ("monitoring-alertmanager-1", "9093/tcp")):
        bindings = json.loads(host.check_output("docker inspect -f '{{json .HostConfig.PortBindings}}' %s", container))
        assert [b["HostIp"] for b in bindings[port]] == ["127.0.0.1"]
    for container in ("monitoring-blackbox-1", "monitoring-mysqld-exporter-1", "monitoring-redis-exporter-1"):
        assert host.check_output("docker inspect -f '{{json .HostConfig.PortBindings}}' %s", container) in (
            "{}",
            "null",
        )
    names = host.check_output("docker ps --format '{{.Names}}'").split()
    assert not [n for n in names if "grafana" in n or "cadvisor" in n], "the sandbox turns Grafana and cAdvisor off"


def test_uis_through_nginx_need_basic_auth(host):
    users = SCENARIO["monitoring_nginx_users"]
    port = DEFAULTS["monitoring_nginx_ports"]["prometheus"]
    url = f"http://127.0.0.1:{port}/-/ready"
    assert host.run("curl -s -o /dev/null -w '%%{http_code}' %s", url).stdout == "401"
    assert host.run("curl -s -o /dev/null -w '%%{http_code}' -u %s %s", "oncall:wrong-password", url).stdout == "401"
    good = f"oncall:{users['oncall']}"
    assert host.run("curl -s -o /dev/null -w '%%{http_code}' -u %s %s", good, url).stdout == "200"
    am = f"http://127.0.0.1:{DEFAULTS['monitoring_nginx_ports']['alertmanager']}/-/ready"
    assert host.run("curl -s -o /dev/null -w '%%{http_code}' -u %s %s", good, am).stdout == "200"
    htpasswd = host.file("/etc/nginx/opsbook-monitoring.htpasswd")
    assert htpasswd.mode == 0o640 and users["oncall"] not in htpasswd.content_string


def test_no_login_through_nginx_stops_prometheus_or_deletes_series(host):
    # Issue 20, item 2: the lifecycle and admin endpoints answer 403 through Nginx, even with a good login, and
    # Prometheus is still up after the attempts; the published servers listen on loopback only.
    good = "oncall:%s" % SCENARIO["monitoring_nginx_users"]["oncall"]
    ports = DEFAULTS["monitoring_nginx_ports"]
    for port, path in (
        (ports["prometheus"], "/-/quit"),
        (ports["prometheus"], "/api/v1/admin/tsdb/snapshot"),
        (ports["prometheus"], "/api/v1/admin/tsdb/delete_series?match[]=up"),
        (ports["alertmanager"], "/-/quit"),
        (ports["alertmanager"], "/-/reload"),
    ):
        url = f"http://127.0.0.1:{port}{path}"
        assert host.run("curl -s -o /dev/null -w '%%{http_code}' -X POST -u %s %s", good, url).stdout == "403", url
    assert host.run("curl -s -o /dev/null -w '%%{http_code}' %s/-/ready", PROMETHEUS).stdout == "200"
    listening = host.check_output("ss -ltnH")
    for port in (ports["prometheus"], ports["alertmanager"]):
        local = [line.split()[3] for line in listening.splitlines() if line.split()[3].endswith(":%d" % port)]
        assert local == ["127.0.0.1:%d" % port], (port, local)


def test_exporter_secrets_only_in_the_env_file(host):
    env = host.file("/opt/monitoring/.env")
    assert env.mode == 0o600 and env.user == "root"
    assert "MYSQLD_EXPORTER_DSN='opsbook_exporter:" in env.content_string
    secret = env.content_string.split("MYSQLD_EXPORTER_DSN='opsbook_exporter:")[1].split("@")[0]
    assert secret not in host.file("/opt/monitoring/compose.yaml").content_string
    am = host.file("/opt/monitoring/alertmanager/alertmanager.yml")
    assert am.mode == 0o640


def test_mysqld_exporter_connects_as_its_own_least_privilege_account(host):
    # Issue 20, item 5: the role created opsbook_exporter in the MariaDB container; the exporter connects as that
    # account (not root) and still reads the server's status; the account cannot read the application's tables.
    grants = host.check_output(
        """docker exec agentchat-mysql-1 sh -c 'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb -uroot -N -B """
        """-e "SHOW GRANTS FOR opsbook_exporter"'"""
    )
    assert "GRANT PROCESS, BINLOG MONITOR, SLAVE MONITOR ON *.* TO" in grants, grants
    assert "GRANT SELECT ON `performance_schema`.* TO" in grants, grants
    assert len(grants.strip().splitlines()) == 2, grants
    uptime = query(host, "mysql_global_status_uptime")["data"]["result"]
    assert [r["value"][1] for r in query(host, "mysql_up")["data"]["result"]] == ["1"] and uptime
    password = host.file("/opt/monitoring/.env").content_string.split("MYSQLD_EXPORTER_DSN='opsbook_exporter:")[1]
    password = password.split("@")[0]
    as_root = """docker exec agentchat-mysql-1 sh -c 'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb -uroot -e "%s"'"""
    host.check_output(as_root % "CREATE TABLE IF NOT EXISTS agentchat.opsbook_exporter_probe (id INT)")
    try:
        # SHOW TABLES of a database without privileges answers an empty list, not an error: read a table.
        denied = host.run(
            "docker exec -e MYSQL_PWD=%s agentchat-mysql-1 mariadb --protocol=TCP -h 127.0.0.1 -u opsbook_exporter "
            "-N -B -e 'SELECT * FROM agentchat.opsbook_exporter_probe'",
            password,
        )
        assert denied.rc != 0 and "denied" in denied.stderr, denied
    finally:
        host.check_output(as_root % "DROP TABLE IF EXISTS agentchat.opsbook_exporter_probe")


def test_alertmanager_secrets_readable_by_alertmanager_only(host):
    # Issue 20, item 3: alertmanager.yml (receivers' secrets) is 0640 root:opsbook-monitoring, a group only the
    # Alertmanager container holds; a process running as nobody on the host (nogroup, the group before) cannot
    # read it, and Alertmanager still loaded it.
    group = DEFAULTS["monitoring_secrets_group"]
    for path in (
        "/opt/monitoring/alertmanager/alertmanager.yml",
        "/opt/monitoring/staging/alertmanager/alertmanager.yml",
    ):
        am = host.file(path)
        assert (am.mode, am.user, am.group) == (0o640, "root", group), path
    assert host.file("/opt/monitoring/alertmanager").group == group
    denied = host.run(
        "setpriv --reuid=65534 --regid=65534 --clear-groups cat /opt/monitoring/alertmanager/alertmanager.yml"
    )
    assert denied.rc != 0 and "Permission denied" in denied.stderr, denied
    gid = host.group(group).gid
    status = host.check_output("docker exec monitoring-alertmanager-1 cat /proc/1/status")
    assert str(gid) in next(line for line in status.splitlines() if line.startswith("Groups:")).split()
    assert host.run("curl -sf %s/api/v2/status", ALERTMANAGER).rc == 0


def test_every_dashboard_expression_runs(host):
    queries = [
        (name, panel["title"], target["expr"])
        for name, dashboard in DASHBOARDS
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]
    # One round trip into the host for all of them: each query's status (or its HTTP error) comes back.
    script = (
        "import json, sys, urllib.error, urllib.parse, urllib.request as u\n"
        "out = []\n"
        "for expr in json.loads(sys.argv[2]):\n"
        "    try:\n"
        "        r = u.urlopen(sys.argv[1] + '/api/v1/query?query=' + urllib.parse.quote(expr), timeout=15)\n"
        "        out.append(json.loads(r.read())['status'])\n"
        "    except urllib.error.HTTPError as e:\n"
        "        out.append(e.read().decode())\n"
        "print(json.dumps(out))"
    )
    results = json.loads(
        host.check_output("python3 -c %s %s %s", script, PROMETHEUS, json.dumps([q[2] for q in queries]))
    )
    failed = [(q, r) for q, r in zip(queries, results) if r != "success"]
    assert not failed
    count = len(results)
    assert count == len(queries) > 40
    record(dashboards=len(DASHBOARDS), dashboard_queries=count)


def test_watchdog_reaches_alertmanager(host):
    deadline = time.monotonic() + 90
    while not am_alerts(host, "Watchdog"):
        assert time.monotonic() < deadline, "the Watchdog never reached Alertmanager"
        time.sleep(1)


def test_endpoint_down_reaches_alertmanager_and_resolves(host):
    host.check_output("docker compose --project-directory %s stop backend", APP_DIR)
    stopped = time.monotonic()
    try:
        fired = None
        while time.monotonic() - stopped < 120:
            if [a for a in am_alerts(host, "EndpointDown") if a["labels"].get("probe") == "backend-health"]:
                fired = time.monotonic() - stopped
                break
            time.sleep(0.5)
        assert fired is not None, "EndpointDown never reached Alertmanager"
        alert = [a for a in am_alerts(host, "EndpointDown") if a["labels"].get("probe") == "backend-health"][0]
        assert alert["labels"]["runbook_id"] == "service-down" and alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["runbook_url"].endswith("/service-down.md")
        assert [r["name"] for r in alert["receivers"]] == ["pager", "chat"]
    finally:
        host.check_output("docker compose --project-directory %s start backend", APP_DIR)
    started = time.monotonic()
    resolved = None
    while time.monotonic() - started < 120:
        if not am_alerts(host, "EndpointDown"):
            resolved = time.monotonic() - started
            break
        time.sleep(0.5)
    record(
        endpoint_down_to_alertmanager_s=round(fired, 1),
        bound_s=ENDPOINT_FOR + 2 * SCRAPE,
        resolved_after_start_s=None if resolved is None else round(resolved, 1),
    )
    assert fired <= ENDPOINT_FOR + 2 * SCRAPE, f"{fired:.1f}s > for {ENDPOINT_FOR}s + 2 x {SCRAPE}s"
    assert resolved is not None, "EndpointDown did not resolve after the backend came back"


def test_config_change_reloads_without_restart(host):
    before = started_at(host, "monitoring-prometheus-1")
    output = playbook("-e", "monitoring_alert_cpu_percent=81")
    assert "Reload Prometheus" in output
    assert started_at(host, "monitoring-prometheus-1") == before, "Prometheus was restarted, not reloaded"
    groups = api(host, f"{PROMETHEUS}/api/v1/rules")["data"]["groups"]
    cpu = [r for g in groups for r in g["rules"] if r["name"] == "HostHighCpu"][0]
    assert cpu["query"].endswith("> 81")
    assert "Grafana and cAdvisor turned off" in output


def test_broken_rule_fails_the_play_and_keeps_the_running_config(host):
    before = api(host, f"{PROMETHEUS}/api/v1/status/config")["data"]["yaml"]
    live = host.file("/opt/monitoring/prometheus/rules/extra.yml").content_string
    broken = json.dumps(
        {
            "monitoring_alert_cpu_percent": 81,
            "monitoring_extra_rules": [{"name": "broken", "rules": [{"alert": "Broken", "expr": "rate(up[5m]"}]}],
        }
    )
    output = playbook("-e", broken, expect_rc=2, tags="monitoring_configure")
    assert "promtool check config rejected" in output
    assert "extra.yml" in output and "parse error" in output.lower(), output[-3000:]
    assert api(host, f"{PROMETHEUS}/api/v1/status/config")["data"]["yaml"] == before
    assert host.file("/opt/monitoring/prometheus/rules/extra.yml").content_string == live
    groups = [g["name"] for g in api(host, f"{PROMETHEUS}/api/v1/rules")["data"]["groups"]]
    assert "broken" not in groups
    assert query(host, "prometheus_config_last_reload_successful")["data"]["result"][0]["value"][1] == "1"


def test_broken_alertmanager_config_fails_the_play_and_keeps_the_running_config(host):
    before = api(host, f"{ALERTMANAGER}/api/v2/status")["config"]["original"]
    output = playbook(
        "-e",
        "monitoring_alert_cpu_percent=81",
        "-e",
        "monitoring_alertmanager_group_wait=soon",
        expect_rc=2,
        tags="monitoring_configure",
    )
    assert "amtool check-config rejected" in output
    assert "soon" in output, output[-3000:]
    assert api(host, f"{ALERTMANAGER}/api/v2/status")["config"]["original"] == before
    assert "group_wait: soon" not in host.file("/opt/monitoring/alertmanager/alertmanager.yml").content_string
