# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The backup role's input checks, run by ansible-playbook on localhost (no host is changed: only preflight.yml
runs): a job setting of the wrong type is refused at role time, naming the variable, instead of failing every
cron run later. Also the cron line: warnings and results are not thrown away."""

from __future__ import annotations

import subprocess
from pathlib import Path

import jinja2
import yaml

from ansible_collections.opsbook.stack.tests.unit.local_play import run_plays

ROOT = Path(__file__).resolve().parents[4]
ROLE = ROOT / "roles" / "backup"


def _preflight(tmp_path: Path, components: dict) -> subprocess.CompletedProcess:
    play = {
        "gather_facts": True,
        "gather_subset": ["!all", "min"],
        "vars_files": [str(ROLE / "defaults" / "main.yml")],
        "tasks": [{"ansible.builtin.import_tasks": str(ROLE / "tasks" / "preflight.yml")}],
    }
    return run_plays(tmp_path, [play], {"backup_components": components})


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
