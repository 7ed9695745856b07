# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Backup and restore as state machines (docs/backup-states.md): the recorded phase, a SIGKILL at a phase and
the rerun after it, leftovers of killed runs, the trial decode before anything is touched, the lock wait, typed
job settings and the shrink guard of retention. A fake engine (no Docker) writes real artifacts through the real
pipeline, in a separate process when it is to be killed."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils import _backup as bk
from ansible_collections.opsbook.stack.plugins.module_utils._backup import jobs
from ansible_collections.opsbook.stack.plugins.module_utils._files import flock
from ansible_collections.opsbook.stack.tests.unit.plugins.module_utils.test_backup import _age_key, _host_copy

# The fake engine, as a script: importable from the host copy of the library (python3 -S, like cron).
FAKE = r'''
import os, sys, time, json
from ansible_collections.opsbook.stack.plugins.module_utils import _backup as bk
from ansible_collections.opsbook.stack.plugins.module_utils._backup import jobs

HOLD = os.environ.get("FAKE_HOLD", "")


def hold(phase):
    if HOLD == phase:
        with open(os.environ["FAKE_READY"], "w") as handle:
            handle.write(phase)
        time.sleep(120)


class FakeEngine(bk.Engine):
    def dump(self, directory):
        rows = int(os.environ.get("FAKE_ROWS", "1000"))
        data = b"".join(b"INSERT INTO t VALUES (%d);\n" % i for i in range(rows)) + b"-- Dump completed\n"
        art = bk.Artifact("app.sql.zst", "sql", database="app")
        art.encrypted = bool(self.settings.age_recipients)
        if art.encrypted:
            art.name += ".age"
        writer = self.writer(os.path.join(directory, art.name))
        writer.write(data[: len(data) // 2])
        hold("dumping")
        writer.write(data[len(data) // 2 :])
        art.bytes, art.sha256 = writer.finish()
        art.raw_bytes = len(data)
        return [art], {"tables": {"app": {"t": rows}}}

    def restore(self, directory, manifest, databases=None):
        self.progress("copying")
        target = os.environ["FAKE_TARGET"]
        with open(target + ".new", "w") as handle:
            handle.write(manifest.id)
        hold("copying")
        self.progress("swapping")
        hold("swapping")
        os.replace(target + ".new", target)
        self.progress("swapping", done=manifest.artifacts[0].name)
        return [a.name for a in manifest.artifacts]

    def restore_steps(self, manifest):
        return ["fake restore of %s" % a.name for a in manifest.artifacts]


jobs.engine_for = lambda spec, settings, client=None: FakeEngine(spec, settings, client=object())


def main(action, dest, *extra):
    settings = bk.Settings(dest=dest, min_free_bytes=0, **json.loads(os.environ.get("FAKE_SETTINGS", "{}")))
    spec = bk.ComponentSpec(name="fake", type="redis", container="fake", keep_last=1, keep_daily=0, keep_weekly=0)
    try:
        out = jobs.run_backup(spec, settings).to_dict() if action == "backup" else jobs.run_restore(spec, settings)
    except bk.BackupError as exc:
        print(json.dumps({"error": exc.message, "exit_code": exc.exit_code, "evidence": exc.evidence}))
        return exc.exit_code
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
'''


@pytest.fixture()
def fake(tmp_path):
    """Runs the fake engine's backup or restore in its own process; hold=<phase> waits there to be killed."""
    lib = tmp_path / "lib"
    lib.mkdir()
    argv, env = _host_copy(lib)
    script = lib / "fake_engine.py"
    script.write_text(FAKE)
    dest = str(tmp_path / "backups")
    target = str(tmp_path / "live")

    def run(action, hold="", settings=None, rows=1000):
        ready = str(tmp_path / "ready")
        if os.path.exists(ready):
            os.unlink(ready)
        penv = dict(
            env,
            FAKE_HOLD=hold,
            FAKE_READY=ready,
            FAKE_TARGET=target,
            FAKE_ROWS=str(rows),
            FAKE_SETTINGS=json.dumps(settings or {}),
        )
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [argv[0], "-S", str(script), action, dest],
            env=penv,
            cwd=str(lib),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if hold:
            deadline = time.monotonic() + 60
            while not os.path.exists(ready):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the fake engine never reached phase %s" % hold
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            return None
        out, err = proc.communicate(timeout=120)
        return proc.returncode, json.loads(out.strip().splitlines()[-1]) if out.strip() else {"stderr": err}

    store = bk.Store(dest, "fake")
    return {"run": run, "store": store, "target": target, "dest": dest}


def _record(store, operation):
    return json.load(open(os.path.join(store.root, "%s.run.json" % operation), encoding="utf-8"))


def test_every_backup_phase_is_recorded_in_order(fake):
    code, out = fake["run"]("backup")
    assert code == 0, out
    record = _record(fake["store"], "backup")
    assert record["phase"] == "done" and record["backup_id"] == out["id"]
    assert [p for p, _ts in record["history"]] == [
        "planned",
        "starting",
        "dumping",
        "verifying",
        "committing",
        "pruning",
        "done",
    ]


def test_a_backup_killed_while_dumping_leaves_no_backup_and_the_rerun_cleans_up(fake):
    code, first = fake["run"]("backup")
    assert code == 0, first
    time.sleep(1.05)  # backup ids have one-second resolution
    fake["run"]("backup", hold="dumping")
    store = fake["store"]
    record = _record(store, "backup")
    assert record["phase"] == "dumping"  # what the killed run left: not terminal
    partial = store.partial_path(record["backup_id"])
    assert os.path.isdir(partial) and any(n.endswith(".partial") for n in os.listdir(partial))
    assert [m.id for m in store.manifests()] == [first["id"]]  # the killed run counts as no backup
    assert store.leftovers() and store.leftovers()[0][0] == partial
    plan = bk.plan_backup(bk.ComponentSpec(name="fake", type="redis", container="x"), bk.Settings(dest=fake["dest"]))
    assert plan["leftovers"] == [os.path.basename(partial)]  # and its bytes count as free for the next run
    assert plan["last_run"]["phase"] == "dumping"

    time.sleep(1.05)
    code, rerun = fake["run"]("backup")
    assert code == 0, rerun
    assert not os.path.exists(partial)
    assert any("killed in phase dumping" in w for w in rerun["warnings"]), rerun["warnings"]
    assert [m.id for m in store.manifests()] == [rerun["id"]]  # keep_last 1: the rerun's backup
    assert store.verify(store.get()) == []
    record = _record(store, "backup")
    assert record["phase"] == "done" and record["recovered_from"] == "dumping"


def test_prune_removes_partial_directories_of_killed_runs(tmp_path):
    store = bk.Store(str(tmp_path), "c")
    os.makedirs(store.partial_path("20260101T000000Z"))
    with open(os.path.join(store.partial_path("20260101T000000Z"), "app.sql.zst.partial"), "wb") as handle:
        handle.write(b"x" * 5000)
    legacy = store.path("20260101T000001Z")  # an earlier release wrote into <id>/ directly
    os.makedirs(legacy)
    with open(os.path.join(legacy, "app.sql.zst"), "wb") as handle:
        handle.write(b"y" * 100)
    assert sum(size for _d, size in store.leftovers()) == 5100
    spec = bk.ComponentSpec(name="c", type="redis", container="x")
    removed = bk.prune(store, spec, None)
    assert removed == ["20260101T000000Z.partial", "20260101T000001Z"]
    assert os.listdir(store.root) == []


def test_the_space_check_counts_what_leftovers_hold(tmp_path):
    store = bk.Store(str(tmp_path), "c")
    os.makedirs(store.partial_path("20260101T000000Z"))
    with open(os.path.join(store.partial_path("20260101T000000Z"), "a.partial"), "wb") as handle:
        handle.write(b"x" * 4096)
    with pytest.raises(bk.BackupError) as err:
        bk.preflight_space(store, bk.Settings(dest=str(tmp_path), min_free_bytes=10**15), {})
    assert err.value.evidence["leftover_bytes"] == 4096 and "leftovers hold 4096" in err.value.message


def test_a_sharply_smaller_dump_is_kept_but_the_last_good_backup_stays(fake):
    code, good = fake["run"]("backup", rows=2000)
    assert code == 0, good
    time.sleep(1.05)
    code, small = fake["run"]("backup", rows=10)
    assert code == 0, small
    assert any("suspect" in w and good["id"] in w for w in small["warnings"]), small["warnings"]
    store = fake["store"]
    # keep_last is 1: without the guard the emptied dump would have pruned the good one.
    assert [m.id for m in store.manifests()] == [good["id"], small["id"]]
    assert store.get(small["id"]).facts["suspect"]
    state = json.load(open(os.path.join(store.root, "state.json"), encoding="utf-8"))
    assert state["last_suspect"] == 1
    time.sleep(1.05)
    code, normal = fake["run"]("backup", rows=2000)
    assert code == 0 and normal["warnings"] == [], normal
    assert [m.id for m in store.manifests()] == [normal["id"]]


def test_shrink_reason_compares_size_and_rows():
    def manifest(raw, rows):
        art = bk.Artifact("a", "sql", raw_bytes=raw)
        return bk.Manifest("x", "c", "mariadb", 0.0, 0.0, [art], {"tables": {"app": {"t": rows}}})

    good = manifest(100_000, 1000)
    assert bk.store.shrink_reason(manifest(100_000, 1000), good, 0.5) == ""
    assert "bytes" in bk.store.shrink_reason(manifest(10_000, 1000), good, 0.5)
    assert "rows" in bk.store.shrink_reason(manifest(90_000, 100), good, 0.5)
    assert bk.store.shrink_reason(manifest(10, 1), good, 0) == ""  # turned off
    assert bk.store.shrink_reason(manifest(10, 1), None, 0.5) == ""  # nothing to compare with


def test_a_restore_killed_while_swapping_is_finished_by_the_rerun(fake):
    code, backup = fake["run"]("backup")
    assert code == 0, backup
    fake["run"]("restore", hold="swapping")
    store = fake["store"]
    record = _record(store, "restore")
    assert record["phase"] == "swapping" and record["backup_id"] == backup["id"] and record["done"] == []
    assert not os.path.exists(fake["target"])  # killed before its swap: the live data is the old one
    code, rerun = fake["run"]("restore")
    assert code == 0, rerun
    assert rerun["resumed"] == {"backup_id": backup["id"], "interrupted_at": "swapping", "done": []}
    assert open(fake["target"], encoding="utf-8").read() == backup["id"]
    record = _record(store, "restore")
    assert record["phase"] == "done" and record["done"] == ["app.sql.zst"]
    assert [p for p, _ts in record["history"]] == ["planned", "verifying", "copying", "swapping", "swapping", "done"]


def test_a_wrong_identity_fails_the_trial_decode_before_anything_is_touched(fake, tmp_path):
    _identity, recipient = _age_key(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    wrong, _r = _age_key(other)
    code, backup = fake["run"]("backup", settings={"age_recipients": [recipient]})
    assert code == 0, backup
    code, out = fake["run"]("restore", settings={"age_identity": wrong})
    assert code == bk.EXIT_RESTORE, out
    assert "trial decode" in out["error"] and "nothing was touched" in out["error"]
    assert out["evidence"]["touched"] is False and out["evidence"]["phase"] == "verifying"
    assert not os.path.exists(fake["target"]) and not os.path.exists(fake["target"] + ".new")  # restore never ran
    record = _record(fake["store"], "restore")
    assert record["phase"] == "failed" and record["failed_in"] == "verifying"


def test_a_truncated_artifact_fails_the_trial_decode(tmp_path):
    path = str(tmp_path / "a.sql.zst")
    writer = bk.ArtifactWriter(path)
    writer.write(b"INSERT INTO t VALUES (1);\n" * 1000)  # no "-- Dump completed": cut off
    size, _digest = writer.finish()
    art = bk.Artifact("a.sql.zst", "sql", size, "", 26 * 1000)
    with pytest.raises(bk.BackupError) as err:
        bk.trial_decode(path, bk.Settings(), art)
    assert err.value.exit_code == bk.EXIT_RESTORE and "Dump completed" in err.value.message
    art.raw_bytes += 1
    with pytest.raises(bk.BackupError) as err:
        bk.trial_decode(path, bk.Settings(), art)
    assert "manifest says %d" % art.raw_bytes in err.value.message


def test_the_restore_waits_for_the_project_lock_and_names_its_holder(tmp_path):
    lock = str(tmp_path / "project.lock")
    released = threading.Event()

    def hold(seconds):
        with flock(lock, "rolling_upgrade web 2.0"):
            released.wait(seconds)

    holder = threading.Thread(target=hold, args=(30,))
    holder.start()
    time.sleep(0.2)
    try:
        started = time.monotonic()
        with pytest.raises(bk.BackupError) as err:
            bk.wait_for_lock(lock, "mysql", 0.5)
        assert time.monotonic() - started >= 0.5
        assert err.value.exit_code == bk.EXIT_LOCKED and "rolling_upgrade web 2.0" in err.value.message
        assert str(os.getpid()) in err.value.message and err.value.evidence["touched"] is False
        threading.Timer(0.3, released.set).start()
        bk.wait_for_lock(lock, "mysql", 10)  # the holder lets go within the wait: no error
    finally:
        released.set()
        holder.join()


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"keep_last": "3"}, "keep_last must be an integer, got the string '3' (write keep_last: 3, without quotes)"),
        ({"databases": "app"}, "databases must be a list of strings, got the string 'app' (write databases: [app]"),
        ({"source_counts": "yes"}, "source_counts must be true or false"),
        ({"keep_daily": True}, "keep_daily must be an integer"),
    ],
)
def test_mistyped_job_settings_are_refused_naming_the_setting(settings, needle):
    with pytest.raises(bk.BackupError) as err:
        bk.ComponentSpec.from_dict("app", dict({"type": "mariadb", "container": "db"}, **settings))
    assert err.value.exit_code == bk.EXIT_USAGE and needle in err.value.message
    assert err.value.message.startswith("component app: ")


def test_the_cron_program_refuses_a_mistyped_job_file_without_a_traceback(tmp_path):
    config = tmp_path / "job.json"
    config.write_text(json.dumps({"components": {"db": {"type": "mariadb", "container": "c", "keep_last": "3"}}}))
    argv, env = _host_copy(tmp_path / "lib")
    proc = subprocess.run(
        argv + ["--config", str(config), "backup", "db"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env=env,
    )
    assert proc.returncode == bk.EXIT_USAGE and "Traceback" not in proc.stderr
    assert "keep_last must be an integer" in proc.stderr
    config.write_text(json.dumps({"space_margin": "0.2", "components": {}}))
    proc = subprocess.run(
        argv + ["--config", str(config), "list", "db"], capture_output=True, text=True, check=False, timeout=30, env=env
    )
    assert proc.returncode == bk.EXIT_USAGE and "settings: space_margin must be a number" in proc.stderr


def test_warnings_reach_stderr_and_the_log_line(tmp_path, monkeypatch, capsys):
    config = tmp_path / "job.json"
    config.write_text(json.dumps({"dest": str(tmp_path), "components": {"r": {"type": "redis", "container": "c"}}}))
    result = bk.BackupResult(
        component="r", id="20260101T000000Z", warnings=["backup 20260101T000000Z kept but suspect"]
    )
    monkeypatch.setattr(jobs, "run_backup", lambda spec, settings: result)
    monkeypatch.setattr(bk.cli, "run_backup", lambda spec, settings: result)
    log = tmp_path / "r.log"
    assert bk.main(["--config", str(config), "--log", str(log), "backup", "r"]) == 0
    assert "opsbook-backup: warning: backup 20260101T000000Z kept but suspect" in capsys.readouterr().err
    assert "warnings=1: backup 20260101T000000Z kept but suspect" in log.read_text()


def test_the_run_record_marks_a_killed_run_interrupted(tmp_path):
    store = bk.Store(str(tmp_path), "c")
    os.makedirs(store.root)
    first = bk.runs.RunRecord(store, "restore", bk.runs.RESTORE_PHASES)
    first.phase("planned", backup_id="X")
    first.phase("copying")
    second = bk.runs.RunRecord(store, "restore", bk.runs.RESTORE_PHASES)
    killed = second.interrupted_before()
    assert killed["interrupted_at"] == "copying" and killed["backup_id"] == "X"
    assert _record(store, "restore")["phase"] == "interrupted"
    assert bk.runs.RunRecord(store, "restore", bk.runs.RESTORE_PHASES).interrupted_before() == {}
    with pytest.raises(ValueError):
        second.phase("dumping")  # not a restore phase
