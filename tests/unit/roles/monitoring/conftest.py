"""Helpers for the monitoring role's offline tests: render its templates, run promtool and amtool.

promtool and amtool come from the host when they are on PATH, otherwise from the sandbox's Prometheus and
Alertmanager images with `docker run --rm` (no daemon is started on this machine, nothing binds 9090/9093).
When neither exists the tests fail: a checker that is missing proves nothing, so nothing is skipped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jinja2
import yaml

from ansible_collections.opsbook.stack.tests.unit.local_play import run_plays
from ansible_collections.opsbook.stack.tests.unit.prom_tools import (  # noqa: F401 pylint: disable=unused-import
    Tool,
    amtool,
    promtool,
)

ROOT = Path(__file__).resolve().parents[4]
ROLE = ROOT / "roles" / "monitoring"
ROLE_VARS = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
# The shared rule files, and each platform's own (monitoring_platform -> files), as vars/main.yml lists them.
RULE_FILES = ROLE_VARS["__monitoring_rule_files"]
PLATFORM_RULE_FILES: dict[str, list[str]] = ROLE_VARS["__monitoring_platform_rule_files"]
PLATFORMS = sorted(PLATFORM_RULE_FILES)


def defaults() -> dict:
    return yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def _contains(seq, item) -> bool:
    return item in (seq or [])


def profile_variables(platform: str) -> dict:
    """The monitoring settings of the profile inventory named like the platform (inventories/<platform>/group_vars/
    all/monitoring.yml), or just the platform when there is no such profile (generic)."""
    path = ROOT / "inventories" / platform / "group_vars" / "all" / "monitoring.yml"
    found = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return {"monitoring_platform": platform, **found}


def rule_files(variables: dict | None = None) -> list[str]:
    """The rule files rules.yml.j2 loads for these variables: the shared ones, then the platform's."""
    platform = {**defaults(), **(variables or {})}["monitoring_platform"]
    return RULE_FILES + PLATFORM_RULE_FILES[platform]


def render(template: str, variables: dict | None = None, ansible_like: bool = True) -> str:
    """Render a role template with the role defaults (plus `variables`) and the few Ansible filters it uses;
    trim_blocks as ansible.builtin.template does, or jinja2's own defaults with ansible_like=False."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(ROLE / "templates")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=ansible_like,
    )
    env.filters["to_json"] = json.dumps
    env.filters["bool"] = bool
    env.filters["to_nice_yaml"] = lambda v, indent=2: yaml.safe_dump(v, indent=indent, default_flow_style=False)
    env.tests["contains"] = _contains
    # The exporters' DSNs are derived in vars/main.yml (from monitoring_*_exporter_dsn or _account): none unless given.
    derived = {"__monitoring_mysqld_dsn": "", "__monitoring_postgres_dsn": ""}
    internals = {
        k: v for k, v in ROLE_VARS.items() if k.startswith("__monitoring_platform") or k == "__monitoring_rule_files"
    }
    context = {**defaults(), **internals, **derived, "inventory_hostname": "opsbook-test", **(variables or {})}
    return env.get_template(template).render(**context)


def render_rules(dest: Path, variables: dict | None = None) -> list[Path]:
    """The rule templates of these variables' platform, rendered into dest/<name>.yml."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in rule_files(variables):
        path = dest / f"{name}.yml"
        path.write_text(render(f"rules/{name}.yml.j2", variables))
        out.append(path)
    return out


def alert_rules(variables: dict | None = None) -> list[dict]:
    """Every alerting rule of the role for these variables (the shared ones and their platform's), with its group
    name and its file."""
    rules = []
    for name in rule_files(variables):
        doc = yaml.safe_load(render(f"rules/{name}.yml.j2", variables))
        for group in doc["groups"]:
            rules += [{**rule, "group": group["name"], "file": name} for rule in group["rules"] if "alert" in rule]
    return rules


def every_alert_rule() -> dict[str, dict]:
    """alert name -> rule, over every platform, each rendered with its profile's settings."""
    return {rule["alert"]: rule for platform in PLATFORMS for rule in alert_rules(profile_variables(platform))}


LABEL_REF = re.compile(r"\{\{ \$labels\.(\w+) \}\}")


def expand_annotations(annotations: dict, labels: dict) -> dict:
    """What Prometheus makes of annotations that use only {{ $labels.x }} (the role's rules use nothing else)."""
    return {k: LABEL_REF.sub(lambda m: str(labels.get(m.group(1), "")), v) for k, v in annotations.items()}


def play(tmp_path: Path, given: dict, tasks: list):
    """tasks of the role with its defaults and vars (Grafana off unless given), as ansible-playbook runs them."""
    plays = [
        {
            "gather_facts": False,
            "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")],
            "tasks": tasks,
        }
    ]
    return run_plays(tmp_path, plays, {"monitoring_grafana_enabled": False, **given})


def preflight(tmp_path: Path, given: dict):
    """The role's preflight on these variables."""
    return play(tmp_path, given, [{"ansible.builtin.import_tasks": str(ROLE / "tasks" / "preflight.yml")}])
