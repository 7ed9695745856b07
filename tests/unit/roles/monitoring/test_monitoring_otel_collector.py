# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The OpenTelemetry Collector of the monitoring role (monitoring_otel_collector_enabled), offline: its rendered
config wires every component it defines into service.pipelines and nothing else; compose.yaml runs it only when
enabled, on 127.0.0.1 ports and as otel-collector on the application's network, without the traces credential;
Prometheus scrapes it only when enabled (promtool accepts that config); with it off, compose.yaml and prometheus.yml
render exactly as the templates without the collector's blocks; the preflight refuses malformed settings by name.
The collector image itself cannot be pulled here, so `otelcol-contrib validate` runs only on a real host."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import re
import shutil

import pytest
import yaml

from ansible_collections.opsbook.stack.tests.unit.local_play import run_each
from ansible_collections.opsbook.stack.tests.unit.roles.monitoring import conftest as monitoring
from ansible_collections.opsbook.stack.tests.unit.roles.monitoring.conftest import (  # noqa: F401 pylint: disable=unused-import
    PLATFORMS,
    ROLE,
    ROOT,
    defaults,
    preflight,
    profile_variables,
    promtool,
    render,
    render_rules,
)

SECRET = "Bearer canary-otel-credential-7Qx"
ON = {"monitoring_otel_collector_enabled": True}
# What compose.yaml.j2 needs beyond the defaults (install.yml sets the gid).
COMPOSE = {"monitoring_secrets_gid": "990", "monitoring_host_address": "172.17.0.1"}
TRACES = {
    "debug": {},
    "otlp-tls-auth": {
        "monitoring_otel_traces_exporter": "otlp",
        "monitoring_otel_traces_endpoint": "https://tempo.example.com:4317",
        "monitoring_otel_traces_auth_value": SECRET,
    },
    "otlp-plain": {
        "monitoring_otel_traces_exporter": "otlp",
        "monitoring_otel_traces_endpoint": "http://jaeger.internal:4317",
    },
    "otlphttp-auth": {
        "monitoring_otel_traces_exporter": "otlphttp",
        "monitoring_otel_traces_endpoint": "https://otlp.example.com/otlp",
        "monitoring_otel_traces_auth_header": "x-api-key",
        "monitoring_otel_traces_auth_value": SECRET,
    },
}
# The component types the contrib image provides that this config may use, by section.
KNOWN = {
    "receivers": {"otlp"},
    "processors": {"memory_limiter", "batch"},
    "exporters": {"prometheus", "debug", "otlp", "otlphttp"},
    "extensions": {"health_check"},
}


def collector_config(variables: dict) -> tuple[str, dict]:
    text = render("otel-collector.yaml.j2", {**ON, **variables})
    return text, yaml.safe_load(text)


def compose(variables: dict) -> tuple[str, dict]:
    text = render("compose.yaml.j2", {**COMPOSE, **variables})
    return text, yaml.safe_load(text)


@pytest.mark.parametrize("traces", sorted(TRACES))
def test_every_component_of_the_collector_config_is_defined_and_used_in_a_pipeline(traces):
    text, config = collector_config(TRACES[traces])
    pipelines = config["service"]["pipelines"]
    assert sorted(pipelines) == ["metrics", "traces"]
    for section in ("receivers", "processors", "exporters"):
        defined = set(config[section])
        used = {name for pipeline in pipelines.values() for name in pipeline[section]}
        assert used <= defined, (section, "referenced but not defined", used - defined)
        assert defined <= used, (section, "defined but in no pipeline", defined - used)
        assert {name.split("/")[0] for name in defined} <= KNOWN[section], section
    assert config["service"]["extensions"] == list(config["extensions"]) == ["health_check"]
    for pipeline in pipelines.values():
        assert pipeline["receivers"] == ["otlp"]
        # memory_limiter first, as the collector's documentation asks, then batch.
        assert pipeline["processors"] == ["memory_limiter", "batch"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    assert SECRET not in text


def test_the_receivers_listen_where_the_applications_and_prometheus_look():
    _text, config = collector_config({})
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    assert config["exporters"]["prometheus"]["endpoint"] == "0.0.0.0:8889"
    assert config["extensions"]["health_check"]["endpoint"] == "0.0.0.0:13133"
    limit = defaults()["monitoring_otel_collector_memory_limit_mib"]
    assert config["processors"]["memory_limiter"]["limit_mib"] == limit
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["debug"]


def test_the_traces_exporter_follows_the_variables_and_keeps_the_credential_in_the_environment():
    _text, tls = collector_config(TRACES["otlp-tls-auth"])
    assert tls["service"]["pipelines"]["traces"]["exporters"] == ["otlp/traces"]
    assert tls["exporters"]["otlp/traces"] == {
        "endpoint": "https://tempo.example.com:4317",
        "headers": {"Authorization": "${env:OTEL_COLLECTOR_TRACES_AUTH}"},
    }
    _text, plain = collector_config(TRACES["otlp-plain"])
    # gRPC to an http:// endpoint needs insecure, or the exporter tries TLS; no header without a credential.
    assert plain["exporters"]["otlp/traces"] == {"endpoint": "http://jaeger.internal:4317", "tls": {"insecure": True}}
    _text, http = collector_config(TRACES["otlphttp-auth"])
    assert http["exporters"]["otlphttp/traces"] == {
        "endpoint": "https://otlp.example.com/otlp",
        "headers": {"x-api-key": "${env:OTEL_COLLECTOR_TRACES_AUTH}"},
    }


def test_compose_runs_the_collector_only_when_enabled():
    _text, off = compose({})
    assert "otel-collector" not in off["services"]
    assert "otel_collector" not in render("compose.yaml.j2", COMPOSE)


def test_the_collector_publishes_on_loopback_only_and_joins_the_app_network_as_otel_collector():
    text, doc = compose({**ON, **TRACES["otlp-tls-auth"], "monitoring_app_network": "astron_default"})
    service = doc["services"]["otel-collector"]
    image = defaults()["monitoring_images"]["otel_collector"]
    assert image["image"] == "otel/opentelemetry-collector-contrib"
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", image["tag"]), "a version tag, never latest"
    assert service["image"] == f"{image['image']}:{image['tag']}"
    assert service["ports"] == ["127.0.0.1:4317:4317", "127.0.0.1:4318:4318", "127.0.0.1:13133:13133"]
    assert service["networks"] == {"default": {}, "app": {"aliases": ["otel-collector"]}}
    assert doc["networks"]["app"] == {"name": "astron_default", "external": True}
    # The credential comes from the 0600 .env file by compose interpolation; never in compose.yaml.
    assert service["environment"] == {"OTEL_COLLECTOR_TRACES_AUTH": "${OTEL_COLLECTOR_TRACES_AUTH}"}
    assert SECRET not in text
    # The memory_limiter's ceiling stays under the container's.
    assert service["mem_limit"] == "640m"


def test_even_with_another_bind_address_the_receivers_stay_on_loopback():
    _text, doc = compose({**ON, "monitoring_bind_address": "0.0.0.0", "monitoring_otel_collector_grpc_port": 14317})
    ports = doc["services"]["otel-collector"]["ports"]
    assert ports[0] == "127.0.0.1:14317:4317"
    assert all(port.startswith("127.0.0.1:") for port in ports)


def test_without_an_app_network_the_collector_stays_on_the_monitoring_network():
    _text, doc = compose({**ON, "monitoring_app_network": ""})
    assert doc["services"]["otel-collector"]["networks"] == {"default": {}}
    assert "app" not in doc["networks"]


def test_the_mounted_file_is_the_one_the_role_checks_and_promotes():
    _text, doc = compose({**ON, "monitoring_dir": "/opt/monitoring"})
    service = doc["services"]["otel-collector"]
    assert service["volumes"] == ["/opt/monitoring/otel-collector:/etc/otelcol-contrib:ro"]
    assert service["command"] == ["--config=/etc/otelcol-contrib/otel-collector.yaml"]
    tasks = yaml.safe_load((ROLE / "tasks" / "configure.yml").read_text())
    promote = next(t for t in tasks if t["name"] == "Promote the checked collector configuration")
    assert promote["ansible.builtin.copy"]["dest"] == "{{ monitoring_dir }}/otel-collector/otel-collector.yaml"
    env_task = next(t for t in tasks if t.get("ansible.builtin.copy", {}).get("dest", "").endswith("/.env"))
    env_file = env_task["ansible.builtin.copy"]
    assert "OTEL_COLLECTOR_TRACES_AUTH='{{ monitoring_otel_traces_auth_value }}'" in env_file["content"]
    assert env_file["mode"] == "0600" and env_task["no_log"] is True


def scrape_jobs(variables: dict) -> list[str]:
    return [job["job_name"] for job in yaml.safe_load(render("prometheus.yml.j2", variables))["scrape_configs"]]


def test_prometheus_scrapes_the_collector_only_when_enabled():
    assert "otel-collector" not in scrape_jobs({})
    doc = yaml.safe_load(render("prometheus.yml.j2", ON))
    job = next(j for j in doc["scrape_configs"] if j["job_name"] == "otel-collector")
    assert job["static_configs"] == [{"targets": ["otel-collector:8889"], "labels": {"instance": "opsbook-test"}}]


def test_promtool_accepts_the_prometheus_config_with_the_collector_job(promtool, tmp_path):  # noqa: F811
    render_rules(tmp_path / "rules")
    (tmp_path / "rules" / "extra.yml").write_text("groups: []\n")
    text = render("prometheus.yml.j2", {**ON, "monitoring_app_network": "astron_default"})
    (tmp_path / "prometheus.yml").write_text(text)
    proc = promtool.run(["check", "config", "prometheus.yml"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def without_collector_blocks(source: str) -> str:
    """The template source without its `{% if monitoring_otel_collector_enabled %}` blocks (nested ifs included)."""
    out, depth = [], 0
    for line in source.splitlines(keepends=True):
        if depth == 0 and line.startswith("{% if monitoring_otel_collector_enabled %}"):
            depth = 1
            continue
        if depth:
            depth += line.count("{% if") + line.count("{%   if") - line.count("endif %}")
            continue
        out.append(line)
    return "".join(out)


VARIANTS = {
    "defaults": {},
    "no-app-network": {"monitoring_app_network": ""},
    **{platform: profile_variables(platform) for platform in PLATFORMS},
}


@pytest.mark.parametrize("template", ["compose.yaml.j2", "prometheus.yml.j2"])
def test_with_the_collector_off_the_files_render_byte_for_byte_as_without_it(template, tmp_path, monkeypatch):
    """The rendering of the current templates equals that of the same templates with the collector's blocks cut out
    (the role's other files unchanged), for the defaults and every profile: turning it off leaves no trace."""
    stripped = tmp_path / "role"
    shutil.copytree(ROLE / "templates", stripped / "templates")
    shutil.copytree(ROLE / "defaults", stripped / "defaults")
    source = (ROLE / "templates" / template).read_text()
    cut = without_collector_blocks(source)
    assert cut != source and "otel" not in cut
    (stripped / "templates" / template).write_text(cut)
    now = {name: render(template, {**COMPOSE, **variables}) for name, variables in VARIANTS.items()}
    monkeypatch.setattr(monitoring, "ROLE", stripped)
    for name, variables in VARIANTS.items():
        assert now[name] == monitoring.render(template, {**COMPOSE, **variables}), name


IMAGES_WITHOUT_COLLECTOR = {k: v for k, v in defaults()["monitoring_images"].items() if k != "otel_collector"}
REFUSED = {
    "unknown-exporter": ({"monitoring_otel_traces_exporter": "jaeger"}, "monitoring_otel_traces_exporter must be"),
    "otlp-without-endpoint": ({"monitoring_otel_traces_exporter": "otlp"}, "monitoring_otel_traces_endpoint must be"),
    "otlp-without-port": (
        {"monitoring_otel_traces_exporter": "otlp", "monitoring_otel_traces_endpoint": "https://tempo.example.com"},
        "monitoring_otel_traces_endpoint must be",
    ),
    "otlp-without-scheme": (
        {"monitoring_otel_traces_exporter": "otlp", "monitoring_otel_traces_endpoint": "tempo:4317"},
        "monitoring_otel_traces_endpoint must be",
    ),
    "otlphttp-quote": (
        {"monitoring_otel_traces_exporter": "otlphttp", "monitoring_otel_traces_endpoint": 'https://x/"a'},
        "monitoring_otel_traces_endpoint must be",
    ),
    "header-name": (
        {"monitoring_otel_traces_auth_header": "Authorization: Bearer"},
        "monitoring_otel_traces_auth_header must be",
    ),
    "same-ports": ({"monitoring_otel_collector_http_port": 4317}, "monitoring_otel_collector_grpc_port, _http_port"),
    "tiny-memory": ({"monitoring_otel_collector_memory_limit_mib": 16}, "monitoring_otel_collector_memory_limit_mib"),
    "no-image": ({"monitoring_images": IMAGES_WITHOUT_COLLECTOR}, "monitoring_images must name otel_collector"),
    "quote-in-credential": ({"monitoring_otel_traces_auth_value": SECRET + "'"}, "monitoring_otel_traces_auth_value"),
}


def test_the_preflight_refuses_malformed_collector_settings_naming_the_variable(tmp_path):
    runs = run_each(tmp_path, {name: {**ON, **case[0]} for name, case in REFUSED.items()}, preflight)
    for name in sorted(REFUSED):
        done, named = runs[name], REFUSED[name][1]
        assert done.returncode != 0, (name, done.stdout)
        assert "Refuse malformed OpenTelemetry Collector settings" in done.stdout, (name, done.stdout)
        assert named in done.stdout and "Nothing was changed" in done.stdout, (name, done.stdout)
        assert SECRET not in done.stdout + done.stderr, (name, "the credential was printed")


def test_the_preflight_passes_good_settings_and_ignores_them_when_the_collector_is_off(tmp_path):
    cases = {name: {**ON, **variables} for name, variables in TRACES.items()}
    # Off, nothing about the collector is judged (as with Grafana's password).
    cases["off-and-malformed"] = {"monitoring_otel_traces_exporter": "jaeger"}
    runs = run_each(tmp_path, cases, preflight)
    for name, done in runs.items():
        assert done.returncode == 0, (name, done.stdout + done.stderr)
        assert SECRET not in done.stdout + done.stderr, (name, "the credential was printed")


def test_the_play_says_so_when_the_application_names_a_collector_that_is_off(tmp_path):
    profile = ROOT / "inventories" / "astron-agent" / "group_vars" / "all"
    astron = yaml.safe_load((profile / "compose_app.yml").read_text())
    assert astron["compose_app_otlp"]["OTLP_ENDPOINT"] == "http://otel-collector:4317"
    cases = {
        "astron-agent": {**profile_variables("astron-agent"), "compose_app_otlp": astron["compose_app_otlp"]},
        "own-collector": {"compose_app_otlp": {"OTLP_ENDPOINT": "http://otel-collector.internal:4317"}},
        "no-otlp": {},
    }
    runs = run_each(tmp_path, cases, preflight)
    said = "the OpenTelemetry Collector is turned off (monitoring_otel_collector_enabled)"
    assert runs["astron-agent"].returncode == 0, runs["astron-agent"].stdout
    assert said in runs["astron-agent"].stdout
    assert "The sandbox cannot pull its official image" in runs["astron-agent"].stdout
    for name in ("own-collector", "no-otlp"):
        assert runs[name].returncode == 0 and said not in runs[name].stdout, (name, runs[name].stdout)


def test_the_sandbox_and_the_astron_agent_profile_turn_the_collector_off_and_say_why():
    for inventory in ("sandbox", "astron-agent"):
        path = ROOT / "inventories" / inventory / "group_vars" / "all" / "monitoring.yml"
        assert yaml.safe_load(path.read_text())["monitoring_otel_collector_enabled"] is False, inventory
        assert "cannot pull" in path.read_text(), inventory
