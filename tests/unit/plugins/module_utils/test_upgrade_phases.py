# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whole runs of rolling_upgrade and rollback on a host described in memory (upgrade_world.World): the phase
each step records, what a rerun does after a kill in each phase, the rollback target, and the faults of issue 14
(docs/state-machine.md). Each test asserts what the operator finds afterwards: compose.yaml == what runs, the
upstream == the running containers, and a journal that tells the truth."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import time

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils import _journal
from ansible_collections.opsbook.stack.plugins.module_utils._journal import Journal, build_release, project_images
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade import (
    BadRequest,
    Run,
    UpgradeError,
    recover,
    rollback,
    rolling_upgrade,
    rollout,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.drain import DrainReport
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import UpstreamError
from ansible_collections.opsbook.stack.tests.unit.plugins.module_utils.upgrade_world import COMPOSE, Killed, World


class _Answer:
    ok, status, error, latency_ms = True, 200, "", 1.0

    def to_dict(self):
        return {"ok": True}


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setattr(rollout, "check_http", lambda probe: _Answer())
    monkeypatch.setattr(rollout, "drain", lambda *_args: DrainReport())
    monkeypatch.setattr(rollout, "RECREATE_SETTLE_S", 0.05)
    w = World(tmp_path)
    journal = Journal(w.s.journal_root, "demo")
    journal.record(
        build_release(journal, "deploy", "succeeded", str(w.path), project_images(w, "demo"), time.time() - 100)
    )
    return w


def journal_of(w):
    return Journal(w.s.journal_root, "demo")


def phases_written(monkeypatch, kill_at=None):
    """Every (release id, phase, moving service) the journal writes; kill_at=(service, phase) dies right after
    that phase is on disk, as a SIGKILL of the module would."""
    written = []
    real = Journal.record
    pending = [kill_at]  # one kill only: the rerun runs to its end

    def record(self, release):
        path = real(self, release)
        service = (release.extra.get("progress") or {}).get("service")
        written.append((release.id, release.phase, service))
        if pending[0] is not None and (service, release.phase) == pending[0] and release.status == "in_progress":
            pending[0] = None
            raise Killed()
        return path

    monkeypatch.setattr(Journal, "record", record)
    return written


def upgrade(w, **services):
    return rolling_upgrade(w.s, services or {"web": "2"}, host=w)


# --------------------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------------------


def test_every_step_of_an_upgrade_records_its_phase_before_it_goes_on(world, monkeypatch):
    written = phases_written(monkeypatch)
    result = upgrade(world)
    assert [p for _id, p, _s in written] == ["planned", "starting", "gated", "switched", "baking", "draining", "done"]
    assert len({i for i, _p, _s in written}) == 1  # one record, updated in place
    record = journal_of(world).get(result["release"]["id"])
    assert (record.status, record.phase) == ("succeeded", "done")
    assert world.consistent() and world.running_images("web") == ["reg/web:2", "reg/web:2"]


WORKING = ["planned", "starting", "gated", "switched", "baking", "draining"]


@pytest.mark.parametrize("phase", WORKING)
def test_killed_in_each_phase_a_rerun_ends_on_one_consistent_baked_release(world, monkeypatch, phase):
    old_addresses = world.serving("web")
    written = phases_written(monkeypatch, kill_at=("web" if phase != "planned" else None, phase))
    with pytest.raises(Killed):
        upgrade(world)
    killed_id = written[-1][0]
    assert journal_of(world).get(killed_id).phase == phase
    # While it lies killed, the unbaked release is never where a rollback goes.
    assert killed_id not in [r.id for r in _journal.rollback_candidates(journal_of(world).releases(), {}, bool)]
    switches_before = len(world.switches)
    rerun = upgrade(world)
    assert world.consistent() and world.running_images("web") == ["reg/web:2", "reg/web:2"]
    assert not journal_of(world).unsettled()
    killed = journal_of(world).get(killed_id)
    if phase == "draining":
        # The bake had passed: the rerun only drained the old containers and completed the record.
        assert (killed.status, killed.phase) == ("succeeded", "done")
        assert rerun["release"]["id"] == killed_id and "completed by the next run" in killed.detail
    else:
        assert (killed.status, killed.phase) == ("failed", "interrupted")
        assert rerun["release"]["id"] != killed_id and rerun["release"]["status"] == "succeeded"
        assert rerun["evidence"]["bake"]["web"]["ok"] is True  # baked in full by the rerun
    if phase in ("switched", "baking"):
        # The unbaked new containers lost the traffic first: the upstream went back to the old ones.
        back = world.switches[switches_before]
        assert back == ("web", old_addresses)
        assert any("switched back to the old containers" in r for r in rerun["reconciled"])


def test_killed_in_the_drain_the_rerun_routes_to_the_new_containers_only_before_it_stops_the_old(world, monkeypatch):
    """Fault matrix, "rollback: SIGKILL of the module at draining": with the lock free while the run lay killed,
    the routing watcher listed every healthy container again, old and new; the rerun stopped the old ones while
    Nginx still sent to them (an HTTP 502 under load)."""
    phases_written(monkeypatch, kill_at=("web", "draining"))
    with pytest.raises(Killed):
        upgrade(world)
    world.sync_from_docker("web", 8000)  # what the watcher does once the killed run's lock is gone
    new = [world.address(c) for c in world.items.values() if c["image"] == "reg/web:2"]
    assert len(world.serving("web")) == 4
    seen_at_stop: list[list[str]] = []
    stop = world.stop_and_remove

    def stop_and_remove(container, grace_s=None):
        seen_at_stop.append(world.serving("web"))
        stop(container, grace_s)

    monkeypatch.setattr(world, "stop_and_remove", stop_and_remove)
    upgrade(world)
    assert seen_at_stop and all(sorted(seen) == sorted(new) for seen in seen_at_stop), seen_at_stop
    assert world.consistent() and world.running_images("web") == ["reg/web:2", "reg/web:2"]


@pytest.mark.parametrize("kind", ["upgrade", "rollback"])
def test_killed_between_stopping_an_old_container_and_removing_it_the_rerun_removes_it(world, monkeypatch, kind):
    """Fault matrix, "rollback: SIGKILL module at draining" (seen once in 20 runs): the kill came after `docker
    stop` of an old container and before its removal. The rerun finished the drain but left the exited container
    (it only looked at old containers still running): compose.yaml and what runs disagreed, and the next `compose
    up --scale` would have counted it as a replica."""
    if kind == "rollback":
        upgrade(world)
    phases_written(monkeypatch, kill_at=("web", "draining"))
    with pytest.raises(Killed):
        if kind == "upgrade":
            upgrade(world)
        else:
            rollback(world.s, host=world)
    leaving = "reg/web:1" if kind == "upgrade" else "reg/web:2"
    old = sorted((c for c in world.items.values() if c["image"] == leaving), key=lambda c: c["created"])
    old[0]["state"] = "exited"  # stopped by the killed run, not yet removed
    rerun = upgrade(world) if kind == "upgrade" else rollback(world.s, host=world)
    assert not [c for c in world.items.values() if c["image"] == leaving], "an old container was left behind"
    assert world.consistent(), world.items
    assert any("which the killed run had stopped" in r for r in rerun["reconciled"]), rerun["reconciled"]


def test_killed_in_the_bake_with_the_old_containers_gone_the_new_ones_are_baked_again(world, monkeypatch):
    written = phases_written(monkeypatch, kill_at=("web", "baking"))
    with pytest.raises(Killed):
        upgrade(world)
    killed_id = written[-1][0]
    for c in list(world.items.values()):
        if c["image"] == "reg/web:1":
            del world.items[c["id"]]  # an engine restart took them
    rerun = upgrade(world)
    killed = journal_of(world).get(killed_id)
    assert (killed.status, killed.phase) == ("succeeded", "done")
    assert rerun["evidence"]["bake"]["web"]["ok"] is True
    assert world.consistent()


def test_a_rollback_killed_in_its_bake_bakes_the_release_it_returns_to_again(world, monkeypatch):
    upgraded = upgrade(world)["release"]["id"]
    written = phases_written(monkeypatch, kill_at=("web", "baking"))
    with pytest.raises(Killed):
        rollback(world.s, host=world)
    killed_id = written[-1][0]
    result = rollback(world.s, host=world)
    killed = journal_of(world).get(killed_id)
    assert (killed.status, killed.phase) == ("succeeded", "done")
    assert result["evidence"]["bake"]["web"]["ok"] is True and result["rolled_back_to"] == killed.extra["rollback_of"]
    assert world.running_images("web") == ["reg/web:1", "reg/web:1"] and world.consistent()
    assert journal_of(world).get(upgraded).status == "rolled_back"


def test_killed_in_the_bake_of_a_bad_release_with_no_old_container_left_is_not_kept_quietly(world, monkeypatch):
    world.behaviour["reg/web:2"] = "5xx"
    world.s.bake_s = 5
    written = phases_written(monkeypatch, kill_at=("web", "baking"))
    with pytest.raises(Killed):
        upgrade(world)
    for c in list(world.items.values()):
        if c["image"] == "reg/web:1":
            del world.items[c["id"]]
    with pytest.raises(UpgradeError, match="failed the bake again"):
        upgrade(world)
    assert not journal_of(world).get(written[-1][0]).settled  # still says where it stopped


def test_an_old_in_progress_record_without_phase_is_read_and_put_in_order(world, monkeypatch):
    journal = journal_of(world)
    deploy = journal.releases()[-1]
    intended = {"web": _journal.ServiceImage("reg/web:2", "sha256:reg-web-2")}
    legacy = build_release(
        journal,
        "upgrade",
        "in_progress",
        str(world.path),
        intended,
        time.time() + 0.5,
        previous=deploy,
        phase="planned",
    )
    time.sleep(0.6)
    world.path.write_text(COMPOSE.replace("reg/web:1", "reg/web:2"))
    world.up("web", "--no-recreate", "--scale", "web=4")
    new = [c for c in world.items.values() if c["image"] == "reg/web:2"]
    world.upstream["web"] = [world.address(c) for c in new]  # killed in the bake, by the code of before
    data = legacy.to_dict()
    del data["phase"]
    (world.dir / "journal" / "demo" / "releases" / (legacy.id + ".json")).write_text(json.dumps(data))
    assert journal.get(legacy.id).phase == "" and not journal.get(legacy.id).settled
    run = Run()
    recover(world, journal, run, world.config())
    assert world.running_images("web") == ["reg/web:1", "reg/web:1"] and world.consistent()
    assert journal.get(legacy.id).phase == "interrupted"


# --------------------------------------------------------------------------------------------------------
# Defect 12: no interrupted record, no removal
# --------------------------------------------------------------------------------------------------------


def test_without_an_interrupted_record_a_scale_out_is_reported_not_removed(world):
    world.up("web", "--no-recreate", "--scale", "web=3")
    run = Run()
    recover(world, journal_of(world), run, world.config())
    assert len(world.running_images("web")) == 3 and not run.reconciled
    assert any("runs 3 containers, compose.yaml says 2" in w and "nothing was removed" in w for w in run.warnings)


# --------------------------------------------------------------------------------------------------------
# Defect 1: the rollback target, and a rollback run twice
# --------------------------------------------------------------------------------------------------------


def test_a_rollback_marks_the_release_it_left_and_a_second_rollback_changes_nothing(world):
    upgraded = upgrade(world)["release"]["id"]
    first = rollback(world.s, host=world)
    assert first["changed"] is True and world.running_images("web") == ["reg/web:1", "reg/web:1"]
    journal = journal_of(world)
    left = journal.get(upgraded)
    assert (left.status, left.phase) == ("rolled_back", "rolled_back")
    assert left.extra["rolled_back_by"] == first["release"]["id"]
    count = len(journal.releases())
    second = rollback(world.s, host=world)
    assert second["changed"] is False and second["rolled_back_to"] == first["rolled_back_to"]
    assert world.running_images("web") == ["reg/web:1", "reg/web:1"] and world.consistent()
    assert len(journal.releases()) == count
    with pytest.raises(BadRequest, match="status rolled_back"):
        rollback(world.s, upgraded, host=world)


def test_a_second_rollback_does_not_go_further_back_than_the_first(world):
    journal = journal_of(world)
    older = journal.releases()[-1]
    older.id, older.created_ts = "00000000T000000Z-older000", older.created_ts - 100
    older.services = {**older.services, "web": _journal.ServiceImage("reg/web:0", "sha256:reg-web-0")}
    journal.record(older)
    upgrade(world)
    rollback(world.s, host=world)
    again = rollback(world.s, host=world)
    assert again["changed"] is False and world.running_images("web") == ["reg/web:1", "reg/web:1"]


# --------------------------------------------------------------------------------------------------------
# Defect 3: stop-first recreate looks at every container
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("behaviour", ["exits", "crashloop", "unhealthy"])
def test_a_stateful_service_that_does_not_stay_up_is_recreated_back(world, behaviour):
    world.behaviour["reg/db:2"] = behaviour
    with pytest.raises(UpgradeError) as info:
        upgrade(world, db="2")
    assert "failed on service db" in str(info.value)
    assert world.running_images("db") == ["reg/db:1"] and world.compose_image("db") == "reg/db:1"
    last = journal_of(world).releases()[-1]
    assert (last.status, last.phase) == ("failed", "failed")


def test_a_failed_recovery_recreate_is_reported_with_the_first_error(world):
    world.behaviour["reg/db:2"] = "exits"
    world.faults.update(recover_up_fails="db", recover_images=("reg/db:1",))
    with pytest.raises(UpgradeError) as info:
        upgrade(world, db="2")
    message = str(info.value)
    assert "exited or restarted" in message and "no space left on device" in message
    assert info.value.result["undo_failures"]
    assert not journal_of(world).releases()[-1].settled  # the next run puts it in order


@pytest.mark.parametrize("phase", ["starting", "gated"])
def test_a_stateful_service_killed_while_recreating_is_checked_again(world, monkeypatch, phase):
    written = phases_written(monkeypatch, kill_at=("db", phase))
    with pytest.raises(Killed):
        upgrade(world, db="2")
    if phase == "starting":  # killed before compose up: the database was never stopped, and is not now
        before = [c["id"] for c in world.items.values() if c["service"] == "db"]
        recover(world, journal_of(world), Run(), world.config())
        assert [c["id"] for c in world.items.values() if c["service"] == "db"] == before
        assert world.compose_image("db") == "reg/db:1"
    killed_id = written[0][0]
    result = upgrade(world, db="2")
    assert world.running_images("db") == ["reg/db:2"] and result["changed"] is True
    assert journal_of(world).get(killed_id).phase == ("done" if phase == "gated" else "interrupted")


# --------------------------------------------------------------------------------------------------------
# Defect 4: every undo step is tried, the first error kept
# --------------------------------------------------------------------------------------------------------


def test_when_switching_back_fails_the_rest_of_the_undo_still_runs(world):
    world.behaviour["reg/web:2"] = "5xx"
    world.s.bake_s = 5
    world.faults["switch_fails"] = lambda n, addresses: n >= 1  # the first switch works, switching back not
    with pytest.raises(UpgradeError) as info:
        upgrade(world)
    message = str(info.value)
    assert "bake failed" in message and "switching the upstream back failed" in message
    assert world.compose_image("web") == "reg/web:1"
    assert world.running_images("web") == ["reg/web:1", "reg/web:1"]  # the new containers are gone
    last = journal_of(world).releases()[-1]
    assert last.status == "failed" and not last.settled
    del world.faults["switch_fails"]
    run = Run()
    recover(world, journal_of(world), run, world.config())
    assert world.consistent() and journal_of(world).get(last.id).phase == "interrupted"


def test_an_upstream_refresh_refused_after_the_undo_is_a_warning_not_an_unfinished_undo(world, monkeypatch):
    # Seen under heavy load: the old replicas' health checks time out, so re-reading the upstream from Docker is
    # refused (no healthy server) although the upstream still lists the old containers, as the undo wants.
    world.behaviour["reg/web:3"] = "unhealthy"

    def refused(service, port):
        raise UpstreamError("an upstream without servers is refused")

    monkeypatch.setattr(world, "sync_from_docker", refused)
    with pytest.raises(UpgradeError) as info:
        upgrade(world, web="3")
    assert "undo did not finish" not in str(info.value) and "became unhealthy" in str(info.value)
    last = journal_of(world).releases()[-1]
    assert (last.status, last.phase) == ("failed", "failed")
    assert any("not re-read from Docker" in w for w in info.value.result["warnings"])


# --------------------------------------------------------------------------------------------------------
# Defect 5: an edit the file's shape does not allow is found before anything moves
# --------------------------------------------------------------------------------------------------------


def test_an_unsupported_compose_shape_stops_the_run_before_the_first_service_moves(world):
    world.path.write_text(
        "name: demo\nservices:\n  web:\n    image: reg/web:1\n    deploy:\n      replicas: 2\n    labels:\n"
        "      io.opsbook.port: '8000'\n  db: {image: 'reg/db:1', labels: {io.opsbook.role: stateful}}\n"
    )
    with pytest.raises(UpgradeError) as info:
        upgrade(world, web="2", db="2")
    assert "service db" in str(info.value) and str(world.path) in str(info.value)
    assert info.value.result["changed"] is False
    assert world.running_images("web") == ["reg/web:1", "reg/web:1"] and world.compose_image("web") == "reg/web:1"
    last = journal_of(world).releases()[-1]
    assert (last.status, last.phase) == ("failed", "failed")


# --------------------------------------------------------------------------------------------------------
# Defects 13 and 15: tags that are not strings, a pull that fails
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", [2.1, 2, True])
def test_a_tag_that_is_not_a_string_is_refused_with_the_advice_to_quote_it(world, tag):
    with pytest.raises(BadRequest, match="quote it") as info:
        upgrade(world, web=tag)
    assert "nothing was changed" in str(info.value)
    assert world.compose_image("web") == "reg/web:1"


def test_a_failed_pull_changed_nothing_and_gives_the_registrys_words(world):
    world.faults["missing_images"] = ("reg/web:9",)
    count = len(journal_of(world).releases())
    with pytest.raises(UpgradeError) as info:
        upgrade(world, web="9")
    assert "manifest unknown" in str(info.value) and info.value.result["changed"] is False
    assert len(journal_of(world).releases()) == count and world.consistent()
