# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The nginx role's /etc/logrotate.d/nginx judged by the real logrotate: each profile's rendering passes
`logrotate -d`; real rotations in a temporary directory rotate a file over its maxsize, keep `rotate` copies and
delete the older ones, leave a small file alone, and keep an append-mode writer's file handle working under
copytruncate; loguru's archives (astron-agent) age out. The default rendering of the Nginx logs is the one from
before the per-path settings. The input check refuses a bad size or path, naming the variable."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from ansible_collections.opsbook.stack.tests.unit.roles.nginx.test_nginx_judges import preflight
from ansible_collections.opsbook.stack.tests.unit.roles.nginx.test_nginx_routing import render, role_variables

ROOT = Path(__file__).resolve().parents[4]
LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"
PROFILES = ["agentchat", "astron-agent", "helloagents", "heartrule"]

needs_logrotate = pytest.mark.skipif(
    not os.path.exists(LOGROTATE) or os.geteuid() != 0,
    reason="needs root and logrotate (./dev deps installs logrotate)",
)

# What the template rendered before the per-path settings, for the defaults and for entries of the old shape.
NGINX_BLOCK = """# test
# Nginx logs: rotated daily, 30 kept. USR1 makes the master reopen its log files (no
# reload, no lost line); delaycompress leaves the newest rotated file uncompressed for late writers.
/var/log/nginx/*.log {
    daily
    missingok
    rotate 30
    compress
    delaycompress
    notifempty
    create 0640 www-data adm
    sharedscripts
    postrotate
        [ ! -s /run/nginx.pid ] || kill -USR1 "$(cat /run/nginx.pid)"
    endscript
}
"""
OLD_SHAPE_ENTRIES = [
    {"path": "/var/log/demo/*.log"},
    {"path": "/var/log/b/*.log", "copytruncate": False, "owner": "app", "group": "app", "mode": "0644",
     "postrotate": "docker kill -s USR1 app"},
]  # fmt: skip
OLD_SHAPE_BLOCKS = """
# The application's log files on the host (/var/log/demo/*.log).
/var/log/demo/*.log {
    daily
    missingok
    rotate 30
    compress
    delaycompress
    notifempty
    copytruncate
}

# The application's log files on the host (/var/log/b/*.log).
/var/log/b/*.log {
    daily
    missingok
    rotate 30
    compress
    delaycompress
    notifempty
    create 0644 app app
    sharedscripts
    postrotate
        docker kill -s USR1 app
    endscript
}
"""


def profile(name: str) -> dict:
    return yaml.safe_load((ROOT / "inventories" / name / "group_vars" / "all" / "logrotate.yml").read_text())


def rendered(overrides: dict) -> str:
    return render("logrotate.j2", role_variables(overrides))


def write_config(tmp_path: Path, app_logs: list, **overrides) -> Path:
    """The role's config with every path under tmp_path (Nginx's logs in tmp_path/nginx, its pid file absent)."""
    (tmp_path / "nginx").mkdir(exist_ok=True)
    conf = tmp_path / "logrotate.conf"
    conf.write_text(
        rendered(
            {
                "nginx_logrotate_paths": [str(tmp_path / "nginx" / "*.log")],
                "nginx_pid_file": str(tmp_path / "nginx.pid"),
                "nginx_logrotate_create_owner": "root",
                "nginx_logrotate_app_logs": app_logs,
                **overrides,
            }
        )
    )
    conf.chmod(0o644)
    return conf


def logrotate(conf: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LOGROTATE, "-s", str(conf.with_name("state")), *args, str(conf)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------


def test_the_default_rendering_of_the_nginx_logs_is_unchanged():
    assert rendered({}) == NGINX_BLOCK


def test_entries_of_the_old_shape_render_as_before():
    assert rendered({"nginx_logrotate_app_logs": OLD_SHAPE_ENTRIES}) == NGINX_BLOCK + OLD_SHAPE_BLOCKS


def test_logrotate_runs_hourly_only_when_a_size_limit_is_set():
    assert not role_variables({})["nginx_logrotate_timer_oncalendar"]
    assert not role_variables({"nginx_logrotate_app_logs": OLD_SHAPE_ENTRIES})["nginx_logrotate_timer_oncalendar"]
    for name in PROFILES:
        assert role_variables(profile(name))["nginx_logrotate_timer_oncalendar"] == "hourly", name
    assert role_variables({"nginx_logrotate_maxsize": "500M"})["nginx_logrotate_timer_oncalendar"] == "hourly"


@pytest.mark.parametrize("name", PROFILES)
def test_each_profile_keeps_its_seed_settings(name):
    logs = profile(name)["nginx_logrotate_app_logs"]
    text = rendered(profile(name))
    assert text.startswith(NGINX_BLOCK)
    expected = {
        "agentchat": ("/var/log/agentchat/*.log", "maxage 30"),
        "astron-agent": ("/opt/core/logs/*[!0-9].log", "maxsize 10M"),
        "helloagents": ("/var/log/helloagents/*.log", "maxage 30"),
        "heartrule": ("/var/log/heartrule/*.log", "maxage 90"),
    }[name]
    assert logs[0]["path"] == expected[0] and "\n    %s\n" % expected[1] in text, text


@needs_logrotate
@pytest.mark.parametrize("name", PROFILES)
def test_logrotate_d_accepts_each_profile(name):
    """The file the role writes for the profile, as `validate: logrotate --debug %s` sees it on the host."""
    conf = Path("/tmp") / ("opsbook-logrotate-%s-%d.conf" % (name, os.getpid()))
    try:
        conf.write_text(rendered(profile(name)))
        conf.chmod(0o644)
        done = subprocess.run([LOGROTATE, "-d", str(conf)], capture_output=True, text=True, timeout=60, check=False)
    finally:
        conf.unlink(missing_ok=True)
    assert done.returncode == 0 and "error:" not in done.stderr, done.stderr


# --------------------------------------------------------------------------------------------------------
# Real rotations
# --------------------------------------------------------------------------------------------------------


@needs_logrotate
def test_a_file_over_maxsize_rotates_keeping_rotate_copies_and_a_small_file_stays(tmp_path):
    logs = tmp_path / "app"
    logs.mkdir()
    # weekly: time alone would not rotate in this test, so every rotation below is the size's.
    conf = write_config(
        tmp_path,
        [{"path": str(logs / "*.log"), "maxsize": "1k", "rotate": 2, "frequency": "weekly", "compress": False}],
    )
    assert logrotate(conf, "-d").returncode == 0
    small = logs / "small.log"
    small.write_text("one short line\n")
    for run in range(1, 5):
        (logs / "big.log").write_text("run %d\n" % run + "x" * 2048 + "\n")
        done = logrotate(conf)
        assert done.returncode == 0, done.stderr
    # big.log.1 is the last run's file, big.log.2 the one before; runs 1 and 2 were deleted.
    assert (logs / "big.log.1").read_text().startswith("run 4\n")
    assert (logs / "big.log.2").read_text().startswith("run 3\n")
    assert not (logs / "big.log.3").exists()
    assert (logs / "big.log").stat().st_size == 0  # copytruncate: the same file, emptied
    assert small.read_text() == "one short line\n" and not (logs / "small.log.1").exists()


@needs_logrotate
def test_copytruncate_keeps_the_writers_file_handle_working(tmp_path):
    """loguru (and Python's logging) open their file in append mode and never reopen it: after the rotation the
    next line still lands in the live file, at its start (no hole of zeros where the old content was)."""
    logs = tmp_path / "app"
    logs.mkdir()
    conf = write_config(tmp_path, [{"path": str(logs / "*.log"), "maxsize": "1k", "compress": False}])
    live = logs / "rpa-server.log"
    with live.open("a", encoding="utf-8") as writer:
        writer.write("before %s\n" % ("x" * 2048))
        writer.flush()
        done = logrotate(conf)
        assert done.returncode == 0, done.stderr
        writer.write("after the rotation\n")
        writer.flush()
    assert live.read_text() == "after the rotation\n"
    assert (logs / "rpa-server.log.1").read_text().startswith("before ")


@needs_logrotate
def test_astron_agent_rotates_the_live_files_and_ages_out_logurus_archives(tmp_path):
    logs = tmp_path / "core-logs"
    logs.mkdir()
    entries = [dict(e, path=e["path"].replace("/opt/core/logs", str(logs))) for e in
               profile("astron-agent")["nginx_logrotate_app_logs"]]  # fmt: skip
    conf = write_config(tmp_path, entries)
    live = logs / "rpa-server.log"
    live.write_text("y" * (11 * 1024 * 1024))
    old_archive = logs / "rpa-server.2025-01-01_10-00-00_123456.log"
    new_archive = logs / "rpa-server.2025-03-01_10-00-00_654321.log"
    for archive in (old_archive, new_archive):
        archive.write_text("an archive loguru rotated at 10 MB\n")
    month_ago = time.time() - 31 * 86400
    os.utime(old_archive, (month_ago, month_ago))
    # logrotate saw both archives on an earlier day (a file it meets first is only recorded, not rotated by time).
    seen = time.strftime("%Y-%m-%d-%H:%M:%S", time.localtime(time.time() - 2 * 86400))
    conf.with_name("state").write_text(
        "logrotate state -- version 2\n" + "".join('"%s" %s\n' % (p, seen) for p in (old_archive, new_archive))
    )
    done = logrotate(conf)
    assert done.returncode == 0, done.stderr
    assert live.stat().st_size == 0 and (logs / "rpa-server.log.1.gz").exists()
    assert not old_archive.exists(), sorted(p.name for p in logs.iterdir())
    assert new_archive.read_text() == "an archive loguru rotated at 10 MB\n"
    assert sorted(p.name for p in logs.iterdir()) == sorted([live.name, "rpa-server.log.1.gz", new_archive.name])


# --------------------------------------------------------------------------------------------------------
# The input check
# --------------------------------------------------------------------------------------------------------

BAD = {
    "size-unit": ({"nginx_logrotate_app_logs": [{"path": "/var/log/a/*.log", "maxsize": "10XB"}]},
                  "nginx_logrotate_app_logs[0].maxsize"),
    "size-blank": ({"nginx_logrotate_maxsize": "10 MB"}, "nginx_logrotate_maxsize"),
    "relative": ({"nginx_logrotate_app_logs": [{"path": "var/log/a/*.log"}]}, "nginx_logrotate_app_logs[0].path"),
    "blank": ({"nginx_logrotate_app_logs": [{"path": "/var/log/a/*.log /etc/passwd"}]},
              "nginx_logrotate_app_logs[0].path"),
    "newline": ({"nginx_logrotate_app_logs": [{"path": "/var/log/a.log\n/etc/shadow"}]},
                "nginx_logrotate_app_logs[0].path"),
    "brace": ({"nginx_logrotate_app_logs": [{"path": "/var/log/a.log { }"}]}, "nginx_logrotate_app_logs[0].path"),
    "nginx-path-blank": ({"nginx_logrotate_paths": ["/var/log/nginx/*.log /etc/passwd"]}, "nginx_logrotate_paths[0]"),
    "rotate": ({"nginx_logrotate_app_logs": [{"path": "/var/log/a/*.log", "rotate": "many"}]},
               "nginx_logrotate_app_logs[0].rotate"),
    "calendar": ({"nginx_logrotate_timer_oncalendar": "every hour"}, "nginx_logrotate_timer_oncalendar"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_logrotate_value_is_refused_naming_it(tmp_path, case):
    overrides, name = BAD[case]
    done = preflight(tmp_path, role_variables({})["nginx_tls_ciphers"], **overrides)
    assert done.returncode != 0, done.stdout[-2000:]
    message = next((line for line in done.stdout.splitlines() if "Nothing was changed" in line), "")
    assert name + " " in message, done.stdout[-3000:]


@pytest.mark.parametrize("name", PROFILES)
def test_each_profile_passes_the_check(tmp_path, name):
    done = preflight(tmp_path, role_variables({})["nginx_tls_ciphers"], **profile(name))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
