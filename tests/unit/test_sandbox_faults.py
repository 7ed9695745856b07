"""The fault matrix's host helper (sandbox/faults.py): how it tells the phase of a run, without a sandbox host."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


faults = load("opsbook_sandbox_faults", ROOT / "sandbox/faults.py")


def container(cid: str, port: int, health: str = "healthy", state: str = "running") -> dict:
    return {
        "id": cid,
        "name": cid,
        "service": "backend",
        "image": "x",
        "state": state,
        "health": health,
        "ports": [port],
    }


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(faults.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(faults, "gate_files", lambda: [])
    return now


OLD = [container("old1", 1001), container("old2", 1002)]


def test_the_phases_of_an_upgrade_as_docker_and_nginx_show_them(clock):
    seen = faults.Fallback({"old1", "old2"}, bake_s=3.0, gate=True)
    old_servers = ["127.0.0.1:1001", "127.0.0.1:1002"]
    assert seen.phase(None, OLD, old_servers) == ""
    assert seen.phase({"status": "in_progress"}, OLD, old_servers) == "planned"
    starting = [*OLD, container("new1", 2001, "starting"), container("new2", 2002, "starting")]
    assert seen.phase({"status": "in_progress"}, starting, old_servers) == "starting"
    healthy = [*OLD, container("new1", 2001), container("new2", 2002)]
    # Healthy, but the gate was not seen yet: still "starting" until the gate closed or was missed.
    assert seen.phase({"status": "in_progress"}, healthy, old_servers) == "starting"
    clock[0] += faults.GATE_UNSEEN_S
    assert seen.phase({"status": "in_progress"}, healthy, old_servers) == "gated"
    new_servers = ["127.0.0.1:2001", "127.0.0.1:2002"]
    assert seen.phase({"status": "in_progress"}, healthy, new_servers) == "switched"
    clock[0] += 1.0
    assert seen.phase({"status": "in_progress"}, healthy, new_servers) == "baking"
    clock[0] += 3.0
    assert seen.phase({"status": "in_progress"}, healthy, new_servers) == "draining"
    # The old containers gone: the drain is over.
    assert seen.phase({"status": "in_progress"}, healthy[2:], new_servers) == "done"


def test_a_canary_upstream_is_not_the_switch(clock):
    seen = faults.Fallback({"old1", "old2"}, bake_s=3.0, gate=False)
    healthy = [*OLD, container("new1", 2001), container("new2", 2002)]
    both = ["127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:2001", "127.0.0.1:2002"]
    assert seen.phase({"status": "in_progress"}, healthy, both) == "gated"


@pytest.mark.parametrize(
    "phase, target, on_time",
    [
        ("gated", "gated", True),
        ("switched", "gated", True),  # a late look: the next phase still counts
        ("baking", "gated", False),  # two phases late: the cell says the fault was not injected
        ("done", "draining", False),  # too late to break anything
        ("starting", "gated", False),
        ("interrupted", "switched", False),
    ],
)
def test_a_fault_lands_at_its_phase_or_the_next_one(phase, target, on_time):
    assert faults.on_time(phase, target) is on_time


def test_the_recorded_phase_of_a_backup_is_read_from_its_newest_record(tmp_path):
    assert faults.state_phase(str(tmp_path)) == ""
    (tmp_path / "state.json").write_text(json.dumps({"last_exit_code": 0}))
    assert faults.state_phase(str(tmp_path)) == ""
    (tmp_path / "run.json").write_text(json.dumps({"phase": "dumping"}))
    assert faults.state_phase(str(tmp_path)) == "dumping"


def test_journal_records_of_any_shape_are_listed_not_fatal(tmp_path, monkeypatch):
    releases = tmp_path / "demo" / "releases"
    releases.mkdir(parents=True)
    (releases / "a.json").write_text("null")
    (releases / "b.json").write_text(
        json.dumps(
            {
                "id": "b",
                "status": "in_progress",
                "phase": "baking",
                "created_ts": 5,
                "services": {"backend": {"image": "x:2"}},
            }
        )
    )
    monkeypatch.setattr(faults, "JOURNAL_ROOT", str(tmp_path))
    records = faults.journal("demo")
    assert [(r["id"], r["status"]) for r in records] == [("a", "unreadable"), ("b", "in_progress")]
    assert records[1]["phase"] == "baking" and records[1]["images"] == {"backend": "x:2"}
