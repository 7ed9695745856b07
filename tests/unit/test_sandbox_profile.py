"""The suite's profile (sandbox/profile.py) and the sandbox's prebuilt host image and image seed (sandbox.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


profile = load("opsbook_sandbox_profile", ROOT / "sandbox/profile.py")
sandbox = load("opsbook_sandbox_for_profile", ROOT / "sandbox/sandbox.py")

LOG = """INFO     [docker_engine > converge] Executing
TASK [x] ***
===============================================================================
opsbook.stack.docker_engine : Install Docker Engine packages ----------- 30.43s
Gathering Facts --------------------------------------------------------- 1.52s
Playbook run took 0 days, 0 hours, 1 minutes, 2 seconds
INFO     [docker_engine > idempotence] Executing
opsbook.stack.docker_engine : Install Docker Engine packages ------------ 1.60s
Playbook run took 0 days, 0 hours, 0 minutes, 12 seconds
INFO     [docker_engine > verify] Executing
8.52s call     molecule/docker_engine/tests/test_default.py::test_pull[ansible://h1]
============================== 7 passed in 11.68s ==============================
"""


def test_molecule_log_gives_tasks_tests_and_seconds_per_step():
    items = profile.parse_molecule_log("docker_engine", LOG)
    assert [(i.kind, i.where, i.seconds) for i in items] == [
        ("task", "docker_engine > converge", 30.43),
        ("task", "docker_engine > converge", 1.52),
        ("task", "docker_engine > idempotence", 1.60),
        ("test", "docker_engine > verify", 8.52),
    ]
    assert items[3].name == "call test_default.py::test_pull[ansible://h1]"
    assert profile.step_seconds(LOG) == {"converge": 62, "idempotence": 12, "verify": 11.68}


def test_summary_lists_the_slowest_and_fails_on_a_scenario_that_did_not_run(tmp_path):
    logs = tmp_path / "molecule"
    logs.mkdir()
    (logs / "docker_engine.log").write_text(LOG)
    (logs / "docker_engine.rc").write_text("0\n")
    (logs / "docker_engine.time").write_text("121\n")
    (tmp_path / "unit.log").write_text("40.00s call     tests/unit/test_slow.py::test_it\n")
    text, ok = profile.summary(tmp_path, 2, 60, ["docker_engine"], ["lint          10s"], wall=200)
    assert ok, text
    lines = text.splitlines()
    assert "40.0s  test  unit" in lines[1] and "30.4s  task  docker_engine > converge" in lines[2]
    assert "budget: total 200s (3.3 min) of 60 min; slowest scenario docker_engine 121s" in text
    text, ok = profile.summary(tmp_path, 2, 60, ["docker_engine", "backup"], [], wall=4000)
    assert not ok
    assert "PROBLEM: scenario backup did not run" in text and "OVER BUDGET" in text
    (logs / "docker_engine.rc").write_text("2\n")
    assert "PROBLEM: scenario docker_engine failed (exit 2" in profile.summary(tmp_path, 2, 60, [], [])[0]


def test_summary_names_the_failed_tests_of_unit_and_of_each_scenario(tmp_path):
    logs = tmp_path / "molecule"
    logs.mkdir()
    failed = "FAILED tests/test_default.py::test_reload[ansible://h1] - AssertionError: 502"
    short = f"=== short test summary info ===\n{failed}\n"
    (logs / "nginx.log").write_text(LOG + short + short + "FAILED - RETRYING: [localhost]: Wait for instance(s)\n")
    (logs / "nginx.rc").write_text("1\n")
    (tmp_path / "unit.log").write_text("ERROR tests/unit/test_x.py::test_y - ImportError\n")
    text, ok = profile.summary(tmp_path, 2, 60, ["nginx"], [])
    assert not ok
    tail = text.split("failed tests:\n", 1)[1].splitlines()
    assert tail[:2] == [
        "  unit: ERROR tests/unit/test_x.py::test_y - ImportError",
        f"  nginx: {failed}",
    ]
    assert tail[2].startswith("PROBLEM: scenario nginx failed")


def test_scenario_hosts_follow_the_prefix_and_the_image(monkeypatch):
    monkeypatch.setenv("OPSBOOK_MOLECULE_PREFIX", "px")
    shared = ROOT / ".config/molecule/config.yml"
    hosts = profile.scenario_hosts(ROOT / "molecule/docker_engine/molecule.yml", shared, "docker_engine")
    assert hosts == ["px-docker_engine", "px-docker_engine-ready"]
    ready = profile.scenario_hosts(
        ROOT / "molecule/docker_engine/molecule.yml", shared, "docker_engine", sandbox.READY_IMAGE
    )
    assert ready == ["px-docker_engine-ready"]
    # A scenario without platforms of its own gets the shared one.
    assert profile.scenario_hosts(ROOT / "molecule/nginx/molecule.yml", shared, "nginx") == ["px-nginx"]
    # The hosts ./dev seeds: those of the image that mount a Docker volume of their own (the backup scenario's
    # repository host runs no Docker Engine).
    assert profile.scenario_hosts(ROOT / "molecule/backup/molecule.yml", shared, "backup") == [
        "px-backup",
        "px-backup-new",
        "px-backup-store",
    ]
    assert profile.scenario_hosts(ROOT / "molecule/backup/molecule.yml", shared, "backup", sandbox.READY_IMAGE) == [
        "px-backup",
        "px-backup-new",
    ]
    monkeypatch.delenv("OPSBOOK_MOLECULE_PREFIX")
    assert (
        profile.scenario_hosts(ROOT / "molecule/upgrade_multi/molecule.yml", shared, "upgrade_multi")[0]
        == "opsbook-um-lb"
    )


def test_seed_volume_is_not_dropped_with_the_hosts_volumes():
    # ./dev drop_host_volumes removes unused volumes named <prefix>-*-docker
    assert not sandbox.SEED_VOLUME.endswith("-docker")
    argv = sandbox.host_run_argv(sandbox.SEED_HOST, image=sandbox.READY_IMAGE, volume=sandbox.SEED_VOLUME)
    assert f"{sandbox.SEED_VOLUME}:/var/lib/docker" in argv
    assert argv[-2] == sandbox.READY_IMAGE


def test_link_seed_links_layers_and_copies_the_engine_databases(tmp_path, monkeypatch):
    seed = tmp_path / "seed"
    for part in ("overlay2", "image", "network"):
        (seed / part).mkdir(parents=True)
    target = tmp_path / "target"
    target.mkdir()
    calls = []
    monkeypatch.setattr(sandbox, "run", lambda argv, **kw: calls.append(argv))
    monkeypatch.setattr(sandbox, "volume_path", lambda v: target)
    sandbox.link_seed(seed, "h1-docker")
    assert calls[0] == ["docker", "volume", "create", "h1-docker"]
    assert calls[1:] == [
        ["cp", "-a", str(seed / "image"), f"{target}/"],
        ["cp", "-a", str(seed / "network"), f"{target}/"],
        ["cp", "-al", str(seed / "overlay2"), f"{target}/"],
    ]


def test_ready_image_context_has_what_the_roles_install():
    dockerfile = (ROOT / "sandbox/images/sandbox-host-ready/Dockerfile").read_text()
    for package in ("docker.io", "nginx", "logrotate", "cron", "zstd", "age"):
        assert f" {package}" in dockerfile, package
    assert "COPY docker-compose /usr/local/lib/docker/cli-plugins/docker-compose" in dockerfile
