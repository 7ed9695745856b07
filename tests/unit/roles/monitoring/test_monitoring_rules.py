"""The monitoring role's alert and recording rules: valid, complete, per the runbook contract, and each one proven by
`promtool test rules` to fire on a bad series and stay quiet on a good one."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import pytest
import yaml
from conftest import (
    PLATFORM_RULE_FILES,
    PLATFORMS,
    ROLE,
    ROLE_VARS,
    ROOT,
    RULE_FILES,
    alert_rules,
    defaults,
    every_alert_rule,
    expand_annotations,
    profile_variables,
    render,
    render_rules,
    rule_files,
)

CASES = yaml.safe_load((Path(__file__).parent / "alert_cases.yml").read_text())

# The contract with the runbooks (docs/contracts.md, "Alerts point at runbooks"): alert name -> runbook_id, exactly.
CONTRACT = {
    "EndpointDown": "service-down",
    "BackendDown": "service-down",
    "ContainerRestarting": "service-down",
    "NginxDown": "service-down",
    "TargetDown": "monitoring-broken",
    "HighErrorRateWarning": "high-error-rate",
    "HighErrorRateCritical": "high-error-rate",
    "SLOErrorBudgetBurnFast": "high-error-rate",
    "SLOErrorBudgetBurnSlow": "high-error-rate",
    "HighLatencyWarning": "high-latency",
    "HighLatencyCritical": "high-latency",
    "MysqlDown": "database-connection",
    "MysqlTooManyConnections": "database-connection",
    "PostgresDown": "database-connection",
    "PostgresTooManyConnections": "database-connection",
    "RedisDown": "redis-problems",
    "RedisMemoryHigh": "redis-problems",
    "HostHighCpu": "host-resources",
    "HostHighMemory": "host-resources",
    "HostDiskAlmostFull": "host-resources",
    "HostDiskFillingUp": "host-resources",
    "HostOomKill": "host-resources",
    "TlsCertificateExpiringSoon": "tls-certificate-expiry",
    "TlsCertificateExpiryCritical": "tls-certificate-expiry",
    "BackupStale": "backup-failed",
    "BackupFailed": "backup-failed",
    "BackupOffsiteFailed": "backup-failed",
    "BackupOffsiteStale": "backup-failed",
    "BackupOffsiteCheckFailed": "backup-failed",
    "BackupOffsiteDrillFailed": "backup-failed",
    "PrometheusRuleFailures": "monitoring-broken",
    "PrometheusConfigReloadFailed": "monitoring-broken",
    "PrometheusNotificationsFailing": "monitoring-broken",
    "AlertmanagerNotificationsFailing": "monitoring-broken",
    "Watchdog": "monitoring-broken",
    "RunbookAutomationHalted": "monitoring-broken",
    "RunbookAwaitingApproval": "monitoring-broken",
    # monitoring_platform: agentchat
    "HttpErrorRatioHigh": "high-error-rate",
    "NginxConnectionsHigh": "high-latency",
    "ThroughputLow": "service-down",
    # monitoring_platform: helloagents
    "SlowSandboxExecution": "sandbox-degraded",
    "SandboxPoolDepleted": "sandbox-degraded",
    "SandboxSuccessSLOBreached": "sandbox-degraded",
    "LatencySLOBreached": "high-latency",
    "ErrorTargetMissed": "high-error-rate",
    # monitoring_platform: heartrule
    "LlmErrorRatioHigh": "llm-provider-degraded",
    "LlmTimeoutRatioHigh": "llm-provider-degraded",
    "LlmLatencyHigh": "llm-provider-degraded",
    "DbPoolWaiting": "database-connection",
    "DbPoolNearlyExhausted": "database-connection",
    "CacheHitRatioLow": "redis-problems",
    # monitoring_platform: astron-agent
    "DependencyErrorRatioHigh": "dependency-degraded",
    "DependencyLatencyHigh": "dependency-degraded",
}
# The alerts of each platform's own rule file (the rest are shared by every platform).
PLATFORM_ALERTS = {
    "generic": set(),
    "agentchat": {"HttpErrorRatioHigh", "NginxConnectionsHigh", "ThroughputLow"},
    "helloagents": {
        "SlowSandboxExecution",
        "SandboxPoolDepleted",
        "SandboxSuccessSLOBreached",
        "LatencySLOBreached",
        "ErrorTargetMissed",
    },
    "heartrule": {
        "LlmErrorRatioHigh",
        "LlmTimeoutRatioHigh",
        "LlmLatencyHigh",
        "DbPoolWaiting",
        "DbPoolNearlyExhausted",
        "CacheHitRatioLow",
    },
    "astron-agent": {"DependencyErrorRatioHigh", "DependencyLatencyHigh"},
}
# Alerts the EDA rulebook must never answer with a runbook run (label automation: manual): it would loop.
MANUAL_ONLY = {"RunbookAutomationHalted", "RunbookAwaitingApproval"}
# The Watchdog fires always, by design: it has no quiet case.
ALWAYS_FIRING = {"Watchdog"}


def test_alert_names_and_runbook_ids_are_the_contract():
    got = {name: rule["labels"]["runbook_id"] for name, rule in every_alert_rule().items()}
    assert got == CONTRACT


@pytest.mark.parametrize("platform", PLATFORMS)
def test_each_platform_adds_its_own_alerts_to_the_shared_ones(platform):
    shared = {r["alert"] for r in alert_rules({"monitoring_platform": "generic"})}
    got = {r["alert"] for r in alert_rules(profile_variables(platform))}
    assert got - shared == PLATFORM_ALERTS[platform] and shared <= got


def test_the_default_is_the_generic_platform_on_the_agentchat_metric_names():
    """The role's defaults load no platform's alerts and query what they queried before the metric names became
    variables: http_requests_total with status=~"5..", http_request_duration_seconds in seconds."""
    assert defaults()["monitoring_platform"] == "generic" and rule_files() == RULE_FILES
    assert {r["alert"] for r in alert_rules()} == set(CONTRACT) - set().union(*PLATFORM_ALERTS.values())
    records = {
        r["record"]: r["expr"].strip()
        for g in yaml.safe_load(render("rules/http.yml.j2"))["groups"]
        for r in g["rules"]
        if "record" in r
    }
    assert records["job:slo_errors_per_request:ratio_rate5m"] == (
        'sum by (job) (rate(http_requests_total{job="app", status=~"5.."}[5m]))\n/\n'
        'sum by (job) (rate(http_requests_total{job="app"}[5m]))'
    )
    assert records["job:http_request_duration_seconds:p95_5m"] == (
        'histogram_quantile(0.95, sum by (job, le) (rate(http_request_duration_seconds_bucket{job="app"}[5m])))'
    )


def test_the_astron_agent_profile_reads_codes_and_microseconds():
    doc = yaml.safe_load(render("rules/http.yml.j2", profile_variables("astron-agent")))
    records = {r["record"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "record" in r}
    assert 'server_request_total{job="app", code!="0"}[5m]' in records["job:slo_errors_per_request:ratio_rate5m"]
    assert records["job:http_request_duration_seconds:p95_5m"].endswith(
        "(rate(server_request_time_microseconds_bucket{job=\"app\"}[5m]))) / 1000000"
    )


@pytest.mark.parametrize("name", RULE_FILES + sorted(f for files in PLATFORM_RULE_FILES.values() for f in files))
def test_alert_names_and_runbook_ids_are_literal_in_the_templates(name):
    text = (ROLE / "templates" / "rules" / f"{name}.yml.j2").read_text()
    for line in text.splitlines():
        if re.match(r"\s*- alert:|\s*runbook_id:", line):
            assert "{" not in line, f"{name}: templated alert name or runbook_id: {line.strip()}"


@pytest.mark.parametrize("rule", list(every_alert_rule().values()), ids=lambda r: r["alert"])
def test_every_alert_is_actionable(rule):
    labels, annotations = rule["labels"], rule["annotations"]
    assert labels["severity"] in {"critical", "warning", "info", "none"}
    assert annotations.get("summary") and annotations.get("description")
    base = defaults()["monitoring_runbook_base_url"]
    assert annotations["runbook_url"] == f"{base}/{labels['runbook_id']}.md"
    # The offline tests expand only {{ $labels.x }}; anything else would make their expectations guesses.
    for text in annotations.values():
        assert re.sub(r"\{\{ \$labels\.\w+ \}\}", "", text).count("{{") == 0, text


def test_runbook_automation_alerts_are_never_automated():
    rules = {r["alert"]: r for r in alert_rules()}
    assert {name for name, r in rules.items() if r["labels"].get("automation") == "manual"} == MANUAL_ONLY
    assert rules["RunbookAutomationHalted"]["labels"]["severity"] == "critical"  # pages: the rulebook gave up
    assert rules["RunbookAwaitingApproval"]["labels"]["severity"] == "warning"
    assert (
        "-e runbook_approved=true -e runbook_approved_by=<name>"
        in (rules["RunbookAwaitingApproval"]["annotations"]["description"])
    )


def test_the_approval_command_names_every_runbook_playbook():
    """RunbookAwaitingApproval turns each - of the runbook id into _ with one label_replace per hyphen: enough of
    them for every runbook id (playbooks/runbook_<id with _>.yml)."""
    expr = next(r["expr"] for r in alert_rules() if r["alert"] == "RunbookAwaitingApproval")
    replacements = expr.count('"playbook", "${1}_${2}", "playbook", "(.*)-(.*)"')
    ids = [p.stem for p in (ROOT / "runbooks").glob("*.md") if p.name != "README.md"]
    assert ids and max(i.count("-") for i in ids) <= replacements, (ids, replacements)
    for rid in ids:
        assert (ROOT / "playbooks" / f"runbook_{rid.replace('-', '_')}.yml").is_file(), rid


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", RULE_FILES + sorted(f for files in PLATFORM_RULE_FILES.values() for f in files))
def test_rules_render_the_same_with_plain_jinja2(name, platform):
    """The runbooks read the rule templates with plain jinja2 defaults (the contract): same data as Ansible's, under
    every platform's profile too."""
    variables = profile_variables(platform)
    assert yaml.safe_load(render(f"rules/{name}.yml.j2", variables, ansible_like=False)) == yaml.safe_load(
        render(f"rules/{name}.yml.j2", variables)
    )


def test_thresholds_follow_the_variables():
    rules = {
        r["alert"]: r
        for r in alert_rules(
            {
                "monitoring_alert_cpu_percent": 93,
                "monitoring_alert_error_ratio_critical": 0.2,
                "monitoring_alert_latency_critical_for": "7m",
            }
        )
    }
    assert rules["HostHighCpu"]["expr"].endswith("> 93")
    assert "> 0.2" in rules["HighErrorRateCritical"]["expr"]
    assert rules["HighLatencyCritical"]["for"] == "7m"


def test_seed_defaults():
    d = defaults()
    assert (d["monitoring_alert_error_ratio_critical"], d["monitoring_alert_error_ratio_critical_for"]) == (0.05, "5m")
    assert (d["monitoring_alert_error_ratio_warning"], d["monitoring_alert_error_ratio_warning_for"]) == (0.01, "10m")
    assert (d["monitoring_alert_latency_p95_warning"], d["monitoring_alert_latency_warning_for"]) == (0.5, "10m")
    assert (d["monitoring_alert_latency_p95_critical"], d["monitoring_alert_latency_critical_for"]) == (2, "5m")
    assert (d["monitoring_alert_cpu_percent"], d["monitoring_alert_cpu_for"]) == (80, "10m")
    assert (d["monitoring_alert_memory_percent"], d["monitoring_alert_memory_for"]) == (85, "5m")
    assert (d["monitoring_alert_disk_percent"], d["monitoring_alert_disk_fill_hours"]) == (90, 24)
    assert d["monitoring_slo_target"] == 0.995
    assert d["monitoring_prometheus_retention"] == "30d"
    assert d["monitoring_prometheus_scrape_interval"] == "15s"


def test_slo_burn_rates_are_the_workbook_pairs():
    doc = yaml.safe_load(render("rules/http.yml.j2"))
    slo = {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "alert" in r}
    fast, slow = slo["SLOErrorBudgetBurnFast"], slo["SLOErrorBudgetBurnSlow"]
    for window in (
        "ratio_rate1h > (14.4 * 0.005)",
        "ratio_rate5m > (14.4 * 0.005)",
        "ratio_rate6h > (6 * 0.005)",
        "ratio_rate30m > (6 * 0.005)",
    ):
        assert window in fast
    for window in (
        "ratio_rate1d > (3 * 0.005)",
        "ratio_rate2h > (3 * 0.005)",
        "ratio_rate3d > (1 * 0.005)",
        "ratio_rate6h > (1 * 0.005)",
    ):
        assert window in slow
    records = {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
        assert f"job:slo_errors_per_request:ratio_rate{window}" in records


@pytest.mark.parametrize("platform", PLATFORMS)
def test_promtool_accepts_the_rules(promtool, tmp_path, platform):
    files = render_rules(tmp_path / "rules", profile_variables(platform))
    proc = promtool.run(["check", "rules", *[str(f) for f in files]], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def render_rule_file(variables: dict) -> str:
    """rules.yml.j2 as the role renders it (rules/opsbook.yml): its lookup of each rule template, and the
    regex_replace that keeps only the groups."""

    def lookup(kind: str, template: str) -> str:
        assert kind == "ansible.builtin.template"
        return render(template, variables)

    def regex_replace(value: str, pattern: str, replacement: str) -> str:
        return re.sub(pattern, replacement, value)

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True)
    env.filters["regex_replace"] = regex_replace
    context = {**defaults(), **ROLE_VARS, **variables, "lookup": lookup}
    return env.from_string((ROLE / "templates" / "rules.yml.j2").read_text()).render(**context)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_live_rule_file_of_every_platform_passes_promtool(promtool, tmp_path, platform):
    """The one file Prometheus loads (rules/opsbook.yml): every shared group and the platform's own, accepted."""
    variables = profile_variables(platform)
    text = render_rule_file(variables)
    (tmp_path / "opsbook.yml").write_text(text)
    proc = promtool.run(["check", "rules", "opsbook.yml"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    alerts = {r["alert"] for g in yaml.safe_load(text)["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == {r["alert"] for r in alert_rules(variables)}


def case_alert(key: str) -> tuple[str, str]:
    """A case key is '<Alert>' or '<Alert>@<platform>'; -> (alert, platform whose profile renders the rules)."""
    name, _sep, platform = key.partition("@")
    owner = next((p for p, names in PLATFORM_ALERTS.items() if name in names), "generic")
    return name, platform or owner


def test_every_alert_has_a_firing_and_a_quiet_case():
    names = set(CONTRACT)
    alerts = {case_alert(key)[0] for key in CASES}
    assert alerts == names, f"cases without an alert: {alerts - names}; alerts without a case: {names - alerts}"
    for key, case in CASES.items():
        name, platform = case_alert(key)
        assert name in {r["alert"] for r in alert_rules(profile_variables(platform))}, f"{key}: not in {platform}"
        assert case["bad"]["fires"], f"{key}: the bad case expects no alert"
        if name not in ALWAYS_FIRING:
            assert "good" in case, f"{key}: no quiet case"


def promtool_test_file(platform: str, every: str) -> str:
    return f"alerts_{every}_test.yml" if platform == "generic" else f"alerts_{platform}_{every}_test.yml"


def promtool_tests() -> dict[str, dict]:
    """The cases as promtool test files, one per platform profile and evaluation interval (long cases evaluate every
    5m to stay fast; the rules of rules_<platform>/); expected labels and annotations come from the rendered rule."""
    files: dict[str, dict] = {}
    for key, case in sorted(CASES.items()):
        name, platform = case_alert(key)
        rules = {r["alert"]: r for r in alert_rules(profile_variables(platform))}
        every = case.get("evaluation_interval", "1m")
        doc = files.setdefault(
            promtool_test_file(platform, every),
            {
                "rule_files": [f"rules_{platform}/{n}.yml" for n in rule_files(profile_variables(platform))],
                "evaluation_interval": every,
                "tests": [],
            },
        )
        rule = rules[name]
        for kind in ("bad", "good"):
            if kind not in case:
                continue
            part = case[kind]
            expected = []
            for labels in part.get("fires", []) if kind == "bad" else []:
                full = {**{k: str(v) for k, v in labels.items()}, **rule["labels"]}
                expected.append({"exp_labels": full, "exp_annotations": expand_annotations(rule["annotations"], full)})
            doc["tests"].append(
                {
                    "name": f"{key} {kind}",
                    "interval": case["interval"],
                    "input_series": [{"series": s["series"], "values": str(s["values"])} for s in part["series"]],
                    "alert_rule_test": [{"eval_time": part["eval_time"], "alertname": name, "exp_alerts": expected}],
                }
            )
    return files


def render_every_platform(dest: Path) -> None:
    for platform in PLATFORMS:
        render_rules(dest / f"rules_{platform}", profile_variables(platform))


def test_promtool_proves_every_alert_fires_and_stays_quiet(promtool, tmp_path):
    render_every_platform(tmp_path)
    files = promtool_tests()
    for name, doc in files.items():
        (tmp_path / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = promtool.run(["test", "rules", *files], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).count("SUCCESS") == len(files)
    assert sum(len(doc["tests"]) for doc in files.values()) == 2 * len(CASES) - len(ALWAYS_FIRING)


@pytest.mark.parametrize("case", ["EndpointDown good", "SandboxPoolDepleted good"])
def test_promtool_test_catches_a_wrong_expectation(promtool, tmp_path, case):
    """The harness can fail: a quiet case that expects an alert is reported (a shared and a platform's alert)."""
    render_every_platform(tmp_path)
    doc = next(d for d in promtool_tests().values() if any(t["name"] == case for t in d["tests"]))
    good = next(t for t in doc["tests"] if t["name"] == case)
    good["alert_rule_test"][0]["exp_alerts"] = [{"exp_labels": {"severity": "critical"}}]
    doc["tests"] = [good]
    (tmp_path / "wrong_test.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = promtool.run(["test", "rules", "wrong_test.yml"], tmp_path)
    assert proc.returncode != 0


def test_prometheus_config_passes_promtool(promtool, tmp_path):
    render_rules(tmp_path / "rules")
    (tmp_path / "rules" / "extra.yml").write_text("groups: []\n")
    variables = {
        "monitoring_host_address": "172.17.0.1",
        "monitoring_app_network": "demo_default",
        # The DSNs the role derives (vars/main.yml) from monitoring_*_exporter_dsn or _account.
        "__monitoring_mysqld_dsn": "x",
        "__monitoring_postgres_dsn": "x",
        "monitoring_redis_exporter_addr": "redis://redis:6379",
        "monitoring_nginx_stub_status_url": "http://127.0.0.1:8081/stub_status",
        "monitoring_extra_scrape_configs": [
            {"job_name": "remote-app", "static_configs": [{"targets": ["10.0.0.9:8000"]}]}
        ],
    }
    text = render("prometheus.yml.j2", variables)
    (tmp_path / "prometheus.yml").write_text(text)
    proc = promtool.run(["check", "config", "prometheus.yml"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = [j["job_name"] for j in yaml.safe_load(text)["scrape_configs"]]
    assert jobs == [
        "prometheus",
        "alertmanager",
        "app",
        "node",
        "nginx",
        "mysqld",
        "postgres",
        "redis",
        "cadvisor",
        "blackbox-exporter",
        "blackbox",
        "remote-app",
    ]


def test_a_broken_extra_rule_is_rejected_by_promtool(promtool, tmp_path):
    """What the role does before promoting a config: the same check must reject a broken rule."""
    render_rules(tmp_path / "rules")
    (tmp_path / "rules" / "extra.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "extra", "rules": [{"alert": "Broken", "expr": "rate(up[5m]"}]}]})
    )
    (tmp_path / "prometheus.yml").write_text(
        render("prometheus.yml.j2", {"monitoring_host_address": "172.17.0.1", "monitoring_app_network": "demo_default"})
    )
    proc = promtool.run(["check", "config", "prometheus.yml"], tmp_path)
    assert proc.returncode != 0
    assert "extra.yml" in proc.stdout + proc.stderr
