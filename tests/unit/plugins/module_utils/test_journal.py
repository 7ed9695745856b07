# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The release journal: atomic records, ordering, idempotence key, retention."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import os

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils import _journal
from ansible_collections.opsbook.stack.plugins.module_utils._journal import (
    MIN_KEEP,
    Journal,
    JournalError,
    Release,
    ServiceImage,
    new_release_id,
    project_images,
)


def release(n, status="succeeded", digest="sha256:aa", compose_hash="h1"):
    return Release(
        id="r%02d" % n,
        project="demo",
        kind="deploy",
        status=status,
        created="",
        created_ts=1000.0 + n,
        services={"web": ServiceImage(image="reg/web:1", image_id="sha256:id", digest="reg/web@" + digest)},
        compose_hash=compose_hash,
    )


def test_record_is_whole_json_and_leaves_no_temporary_file(tmp_path):
    journal = Journal(str(tmp_path), "demo")
    path = journal.record(release(1))
    assert json.loads(open(path).read())["services"]["web"]["digest"] == "reg/web@sha256:aa"
    assert os.listdir(journal.path) == ["r01.json"]
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"


def test_latest_picks_newest_with_status(tmp_path):
    journal = Journal(str(tmp_path), "demo")
    for n, status in [(1, "succeeded"), (2, "succeeded"), (3, "failed")]:
        journal.record(release(n, status))
    assert journal.latest().id == "r02"
    assert journal.latest(None).id == "r03"


def test_same_content_compares_digests_and_compose_hash():
    assert release(1).same_content(release(2))
    assert not release(1).same_content(release(2, digest="sha256:bb"))
    assert not release(1).same_content(release(2, compose_hash="h2"))


def test_prune_keeps_at_least_five_and_the_newest_succeeded(tmp_path):
    journal = Journal(str(tmp_path), "demo")
    journal.record(release(1, "succeeded"))
    for n in range(2, 10):
        journal.record(release(n, "failed"))
    removed = journal.prune(keep=2)
    kept = [r.id for r in journal.releases()]
    assert len(kept) == MIN_KEEP + 1
    assert "r01" in kept  # the only succeeded release survives retention
    assert removed == ["r02", "r03", "r04"]


def test_broken_records_are_reported_not_fatal(tmp_path):
    journal = Journal(str(tmp_path), "demo")
    journal.record(release(1))
    with open(os.path.join(journal.path, "r02.json"), "w") as fh:
        fh.write("{half")
    assert [r.id for r in journal.releases()] == ["r01"]
    assert journal.broken() == [os.path.join(journal.path, "r02.json")]


def test_unknown_release_names_recent_ones(tmp_path):
    journal = Journal(str(tmp_path), "demo")
    journal.record(release(1))
    with pytest.raises(JournalError, match=r"release .nope. is not in .*newest known: r01"):
        journal.get("nope")


def test_release_ids_sort_by_time_and_never_collide():
    first = new_release_id(0, "abcdef1234")
    assert first == "19700101T000000Z-abcdef12"
    assert new_release_id(0, "abcdef1234", [first]) == first + ".2"


class FakeClient:
    def __init__(self, containers, images):
        self.containers, self.images = containers, images

    def list_containers(self, labels=None, all=False):  # pylint: disable=redefined-builtin
        return self.containers

    def inspect_image(self, image):
        return self.images[image]


def test_project_images_resolve_digests_and_prefer_the_newest_replica():
    containers = [
        {"Labels": {"com.docker.compose.service": "web"}, "Image": "reg:5000/web:1", "ImageID": "old", "Created": 1},
        {"Labels": {"com.docker.compose.service": "web"}, "Image": "reg:5000/web:2", "ImageID": "new", "Created": 2},
        {
            "Labels": {"com.docker.compose.service": "job", "com.docker.compose.oneoff": "True"},
            "Image": "x",
            "ImageID": "x",
            "Created": 3,
        },
    ]
    images = {
        "old": {"RepoDigests": ["reg:5000/web@sha256:01"]},
        "new": {"RepoDigests": ["other/web@sha256:ff", "reg:5000/web@sha256:02"]},
    }
    found = project_images(FakeClient(containers, images), "demo")
    assert list(found) == ["web"]
    assert found["web"].digest == "reg:5000/web@sha256:02"
    assert found["web"].image == "reg:5000/web:2"


@pytest.mark.parametrize(
    "content, reason",
    [
        ("null", "the record is null, not an object"),
        ("[]", "the record is list, not an object"),
        ('{"id": "r02", "project": "demo", "status": "succeeded", "created_ts": null}', "created_ts is null"),
        ('{"id": "r02", "project": "demo", "status": "succeeded", "services": []}', "services and extra"),
        ('{"id": "r02", "project": "demo", "status": "bogus"}', "status 'bogus'"),
        ('{"id": "r02", "project": "demo", "status": "succeeded", "services": {"web": 3}}', "not an object"),
    ],
)
def test_records_of_the_wrong_shape_are_skipped_with_a_warning_and_get_names_them(tmp_path, content, reason):
    journal = Journal(str(tmp_path), "demo")
    journal.record(release(1))
    bad = os.path.join(journal.path, "r02.json")
    with open(bad, "w") as fh:
        fh.write(content)
    assert [r.id for r in journal.releases()] == ["r01"]
    assert len(journal.skipped) == 1 and bad in journal.skipped[0] and reason in journal.skipped[0]
    assert journal.latest().id == "r01" and journal.broken() == [bad]
    with pytest.raises(JournalError, match="the release record %s is corrupt .*%s" % (bad, reason.split()[0])):
        journal.get("r02")


@pytest.mark.parametrize("wanted", ["../../x", "/etc/passwd", ".hidden", "a/b", ""])
def test_get_refuses_what_is_not_a_release_id(tmp_path, wanted):
    (tmp_path / "x.json").write_text('{"id": "x", "project": "demo", "status": "succeeded"}')
    journal = Journal(str(tmp_path / "j"), "demo")
    with pytest.raises(JournalError, match="is not a release id"):
        journal.get(wanted)


def test_a_record_of_before_phases_reads_with_the_phase_of_its_status(tmp_path):
    journal = Journal(str(tmp_path), "demo")
    journal.ensure()
    for n, status in [(1, "succeeded"), (2, "failed"), (3, "in_progress")]:
        data = release(n, status).to_dict()
        del data["phase"]
        with open(os.path.join(journal.path, "r%02d.json" % n), "w") as fh:
            json.dump(data, fh)
    phases = [(r.id, r.phase, r.settled) for r in journal.releases()]
    assert phases == [("r01", "done", True), ("r02", "failed", True), ("r03", "", False)]
    assert [r.id for r in journal.unsettled()] == ["r03"]


def test_a_record_left_in_a_working_phase_is_unsettled_whatever_its_status(tmp_path):
    journal = Journal(str(tmp_path), "demo")
    undo_failed = release(1, "failed")
    undo_failed.phase = "switched"
    journal.record(undo_failed)
    journal.record(release(2))
    assert [r.id for r in journal.unsettled()] == ["r01"]
    with pytest.raises(JournalError, match="phase 'nonsense'"):
        bad = release(3)
        bad.phase = "nonsense"
        journal.record(bad)


def versioned(n, version, kind="deploy", status="succeeded", **extra):
    """Release n of web:version (image id by version), as the journal has it."""
    image = ServiceImage(image="reg/web:%s" % version, image_id="sha256:%s" % version, digest="")
    return Release(
        id="r%02d" % n,
        project="demo",
        kind=kind,
        status=status,
        created="",
        created_ts=1000.0 + n,
        services={"web": image},
        extra=extra,
    )


def runs(version):
    return {"web": ServiceImage(image="reg/web:%s" % version, image_id="sha256:%s" % version, digest="")}


@pytest.mark.parametrize(
    "status, phase, running",
    [
        ("in_progress", "switched", "v1"),  # killed at the switch, not yet put in order: half of it runs
        ("in_progress", "switched", "v2"),
        ("failed", "interrupted", "v1"),  # a later run undid it: the old release runs again
    ],
)
def test_a_rerun_after_an_unfinished_rollback_goes_where_it_was_going(status, phase, running):
    """Fault matrix, "rollback: SIGKILL of the module at switched": the rerun chose the release the killed
    rollback was leaving (what ran before it) and would have undone the operator's rollback."""
    releases = [versioned(1, "v2"), versioned(2, "v1")]
    killed = versioned(3, "v2", kind="rollback", status=status, rollback_of="r01")
    killed.phase = phase
    releases.append(killed)
    candidates = _journal.rollback_candidates(releases, runs(running), lambda image_id: True)
    assert [r.id for r in candidates][:1] == ["r01"]
    assert "r03" not in [r.id for r in candidates]


def test_an_unfinished_rollback_whose_target_is_gone_leaves_the_usual_rule():
    releases = [versioned(1, "v2"), versioned(2, "v1"), versioned(3, "v3")]
    killed = versioned(4, "v2", kind="rollback", status="in_progress", rollback_of="r01")
    killed.phase = "switched"
    releases.append(killed)
    candidates = _journal.rollback_candidates(releases, runs("v3"), lambda image_id: image_id != "sha256:v2")
    assert [r.id for r in candidates] == ["r02"]


def test_after_a_finished_rollback_or_an_upgrade_the_unfinished_rule_does_not_apply():
    releases = [versioned(1, "v2"), versioned(2, "v1")]
    done = versioned(3, "v2", kind="rollback", rollback_of="r01")
    assert [r.id for r in _journal.rollback_candidates(releases + [done], runs("v2"), bool)] == ["r01"]
    killed = versioned(3, "v2", kind="rollback", status="failed", rollback_of="r01")
    killed.phase = "interrupted"
    upgrade = versioned(4, "v3", kind="upgrade")
    assert [r.id for r in _journal.rollback_candidates(releases + [killed, upgrade], runs("v3"), bool)] == [
        "r02",
        "r01",
    ]
