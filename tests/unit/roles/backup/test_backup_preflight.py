# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The backup role's input checks, run by ansible-playbook on localhost (no host is changed: only preflight.yml
runs): a job setting of the wrong type is refused at role time, naming the variable, instead of failing every
cron run later. Also the cron line: warnings and results are not thrown away."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

from ansible_collections.opsbook.stack.plugins.module_utils._backup.registry import TYPES
from ansible_collections.opsbook.stack.tests.unit.local_play import run_plays

ROOT = Path(__file__).resolve().parents[4]
ROLE = ROOT / "roles" / "backup"


def preflight(
    tmp_path: Path, extra_vars: dict, vars_files: tuple[Path, ...] = (), after: tuple[dict, ...] = ()
) -> subprocess.CompletedProcess:
    """The role's preflight.yml with its defaults and vars (then vars_files, an inventory's group_vars), and the
    tasks of after behind it."""
    play = {
        "gather_facts": True,
        "gather_subset": ["!all", "min"],
        "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")]
        + [str(path) for path in vars_files],
        "tasks": [{"ansible.builtin.import_tasks": str(ROLE / "tasks" / "preflight.yml")}, *after],
    }
    return run_plays(tmp_path, [play], extra_vars)


def _preflight(tmp_path: Path, components: dict) -> subprocess.CompletedProcess:
    return preflight(tmp_path, {"backup_components": components})


def test_well_typed_jobs_pass(tmp_path):
    proc = _preflight(
        tmp_path,
        {"mysql": {"type": "mariadb", "container": "db", "databases": ["app"], "keep_last": 3, "source_counts": True}},
    )
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_mistyped_job_settings_are_refused_at_role_time_naming_each(tmp_path):
    proc = _preflight(
        tmp_path,
        {
            "mysql": {"type": "mariadb", "container": "db", "keep_last": "3"},
            "pg": {"type": "postgres", "container": "pg", "databases": "app"},
            "cache": {"type": "redis", "container": "r", "source_checksums": "yes"},
        },
    )
    assert proc.returncode != 0
    for needle in (
        'mysql: keep_last must be an integer, got "3" (write backup_components.mysql.keep_last: 3 without quotes)',
        'pg: databases must be a list of names, got "app" (write backup_components.pg.databases: [app]',
        "cache: source_checksums must be true or false",
        "Nothing was changed",
    ):
        assert needle in proc.stdout, proc.stdout[-3000:]


def test_path_jobs_need_an_absolute_normalised_path_named_in_the_message(tmp_path):
    proc = _preflight(
        tmp_path,
        {
            "grafana": {"type": "path", "path": "/var/lib/monitoring/grafana", "stop_owners": True},
            "nopath": {"type": "path"},
            "relative": {"type": "path", "path": "data/grafana"},
            "dotted": {"type": "path", "path": "/var/lib/../grafana"},
            "root": {"type": "path", "path": "/"},
            "typo": {"type": "path", "volume": "grafana"},
        },
    )
    assert proc.returncode != 0
    for needle in (
        "nopath: type path needs path, the absolute host directory to back up (set backup_components.nopath.path)",
        'relative: path "data/grafana" must be an absolute, normalised host directory below / '
        "(backup_components.relative.path",
        'dotted: path "/var/lib/../grafana" must be',
        'root: path "/" must be',
        "typo: type path needs path",
    ):
        assert needle in proc.stdout, proc.stdout[-3000:]
    assert "grafana:" not in proc.stdout.replace("/grafana", "")


def test_the_role_knows_the_types_of_the_engine_registry():
    known = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["__backup_types"]
    assert tuple(known) == TYPES


def test_the_cron_line_keeps_warnings_and_results():
    text = (ROLE / "templates" / "cron.j2").read_text()
    rendered = jinja2.Template(text).render(
        ansible_managed="managed",
        __backup_job="mysql",
        __backup_job_type="mariadb",
        __backup_job_delay=3,
        __backup_job_schedule="17 2 * * *",
        __backup_job_drill_schedule="41 4 * * 0",
        backup_log_dir="/var/log/opsbook",
        backup_metrics_dir="/m",
        backup_bin="/usr/local/bin/opsbook-backup",
        backup_config_dir="/etc/opsbook/backup",
    )
    jobs = [line for line in rendered.splitlines() if line.startswith(("17 ", "41 "))]
    assert len(jobs) == 2
    for line in jobs:
        assert "/dev/null" not in line
        assert "2>>/var/log/opsbook/backup-mysql.log" in line and "| logger -t opsbook-backup-mysql" in line


def test_the_cron_files_task_prints_no_job_setting_at_v(tmp_path):
    """A job's settings may hold a database password: the task that writes the cron files loops over job names
    only, so `-v` (which prints each loop result with its item) shows no password (issue 20, item 3). The task
    itself, taken from configure.yml as it is, runs in check mode (nothing is written)."""
    tasks = yaml.safe_load((ROLE / "tasks" / "configure.yml").read_text())
    task = next(t for t in tasks if t.get("name", "").startswith("Write one cron file per job"))
    task["ansible.builtin.template"]["src"] = str(ROLE / "templates" / "cron.j2")
    canary = "canary-9d2e-db-password"
    components = {"app-db": {"type": "mariadb", "container": "db", "databases": ["app"], "password": canary}}
    play = {"gather_facts": False, "vars_files": [str(ROLE / "defaults" / "main.yml")], "tasks": [task]}
    proc = run_plays(tmp_path, [play], {"backup_components": components}, "-v", "--check")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "(item=app-db)" in proc.stdout
    assert canary not in proc.stdout + proc.stderr


PROFILES = ("agentchat", "astron-agent", "heartrule", "helloagents")
DATABASE_PRESETS = ("mariadb", "mysql", "postgres", "redis")


def _monitoring_services() -> set:
    """The services of the monitoring role's compose file (the containers monitoring-<service>-1)."""
    text = (ROOT / "roles" / "monitoring" / "templates" / "compose.yaml.j2").read_text()
    return set(re.findall(r"^  ([a-z][a-z0-9-]*):$", text.split("\nservices:", 1)[1].split("\n\n", 1)[0], re.M))


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_backs_up_its_databases_and_grafana_through_the_preflight(tmp_path, profile):
    """Issue 16, item 4: a profile's backup.yml passes the role's preflight with the profile's own group_vars, its
    jobs are named after compose services that exist (the profile's, or the monitoring stack's), every database
    service has a job, passwords come from the profile's secrets, and Grafana's job is the directory the monitoring
    role bind-mounts."""
    group_vars = ROOT / "inventories" / profile / "group_vars" / "all"
    jobs_file = tmp_path / "jobs.json"
    write_jobs = {
        "name": "Write the jobs as the role sees them",
        "ansible.builtin.copy": {"content": "{{ backup_components | to_json }}", "dest": str(jobs_file)},
    }
    proc = preflight(tmp_path, {}, tuple(sorted(group_vars.glob("*.yml"))), (write_jobs,))
    assert proc.returncode == 0, proc.stdout[-3000:]
    jobs = json.loads(jobs_file.read_text())

    app = yaml.safe_load((group_vars / "compose_app.yml").read_text())
    secrets = yaml.safe_load((group_vars / "secrets.yml").read_text())["compose_app_secrets"]
    raw = yaml.safe_load((group_vars / "backup.yml").read_text())["backup_components"]
    project, services = app["compose_app_project"], app["compose_app_services"]
    monitoring = _monitoring_services()
    for name, job in jobs.items():
        if "container" in job:
            service = job["container"].removeprefix(project + "-").removeprefix("monitoring-").removesuffix("-1")
            assert job["container"] in ("%s-%s-1" % (project, name), "monitoring-%s-1" % name), (name, job)
            assert service == name and (name in services or name in monitoring), (name, job)
        if "password" in job:
            assert re.fullmatch(r"\{\{ compose_app_secrets\.\w+ \}\}", raw[name]["password"]), raw[name]
            assert job["password"] in secrets.values(), name
    for name, service in services.items():
        if service.get("preset") in DATABASE_PRESETS:
            assert name in jobs, "%s: the database service %s has no backup job" % (profile, name)
    template = (ROOT / "roles" / "monitoring" / "templates" / "compose.yaml.j2").read_text()
    assert "{{ monitoring_data_dir }}/grafana:/var/lib/grafana" in template
    data_dir = yaml.safe_load((ROOT / "roles" / "monitoring" / "defaults" / "main.yml").read_text())
    assert data_dir["monitoring_data_dir"] == "/var/lib/{{ monitoring_project }}"
    assert jobs["grafana"] == {"type": "path", "path": "/var/lib/monitoring/grafana", "stop_owners": True}
