# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Backups of a host directory (type path, issue 16 item 4: Grafana's bind-mounted data) against real directories:
backup, change, restore gives back exactly the files (content, modes, owners), the drill compares every entry,
the containers that bind-mount the directory are stopped and started, and bad input names the setting."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import os
import secrets
import stat

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils import _backup as bk
from ansible_collections.opsbook.stack.plugins.module_utils._backup.argspec import (
    component_module_rules,
    job_from_params,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.engine_path import tree_digest, tree_of
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient
from ansible_collections.opsbook.stack.tests.unit.db_containers import IMAGES, PREFIX, _create, _docker_ready, _sh


def _settings(tmp_path, **kw):
    return bk.Settings(dest=str(tmp_path / "backups"), metrics_dir=str(tmp_path / "metrics"), min_free_bytes=0, **kw)


def _snapshot(root):
    """Every entry below root and root itself: type, mode, owner, content or link target."""
    found = {}
    for base, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = os.path.join(base, name)
            st = os.lstat(path)
            body = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    body = handle.read()
            found[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, body)
    st = os.stat(root)
    found["."] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, None)
    return found


def _grafana_like(root):
    os.makedirs(os.path.join(root, "plugins", "panel"))
    os.makedirs(os.path.join(root, "png"))
    with open(os.path.join(root, "grafana.db"), "wb") as handle:
        handle.write(os.urandom(64 * 1024))
    with open(os.path.join(root, "plugins", "panel", "plugin.json"), "w", encoding="utf-8") as handle:
        handle.write('{"id": "panel"}\n')
    with open(os.path.join(root, "empty"), "w", encoding="utf-8"):
        pass
    os.symlink("plugins/panel/plugin.json", os.path.join(root, "current"))
    os.chmod(os.path.join(root, "grafana.db"), 0o640)
    os.chmod(os.path.join(root, "empty"), 0o604)
    os.chmod(os.path.join(root, "plugins", "panel"), 0o550)
    os.chmod(root, 0o750)
    if os.geteuid() == 0:
        os.chown(os.path.join(root, "grafana.db"), 472, 472)  # Grafana's user in its image
        os.lchown(root, 472, 0)


@pytest.mark.parametrize(
    "settings, needle",
    [
        ({}, "type path needs path, the absolute host directory to back up: set the job's path setting "
             "(backup_components.grafana.path in the backup role)"),
        ({"path": "data/grafana"}, "path 'data/grafana' is relative: the job's path setting "
                                   "(backup_components.grafana.path in the backup role) must be an absolute"),
        ({"path": "/var/lib/../grafana"}, "must be a normalised directory below /"),
        ({"path": "/"}, "must be a normalised directory below /"),
    ],
)  # fmt: skip
def test_bad_paths_are_refused_naming_the_setting(settings, needle):
    with pytest.raises(bk.BackupError) as err:
        bk.ComponentSpec(name="grafana", type="path", **settings)
    assert err.value.exit_code == bk.EXIT_USAGE and needle in err.value.message, err.value.message


def test_a_missing_directory_is_refused_naming_the_setting(tmp_path):
    spec = bk.ComponentSpec(name="grafana", type="path", path=str(tmp_path / "absent"), stop_owners=False)
    with pytest.raises(bk.BackupError) as err:
        bk.run_backup(spec, _settings(tmp_path))
    assert err.value.exit_code == bk.EXIT_USAGE
    assert "is not a directory on this host (backup_components.grafana.path)" in err.value.message
    assert not [n for n in os.listdir(tmp_path / "backups" / "grafana") if n[0].isdigit()]  # nothing committed


def test_the_module_options_accept_a_path_job():
    settings, spec = job_from_params(
        {"component": "grafana", "type": "path", "path": "/var/lib/monitoring/grafana", "dest": "/b"}
    )
    assert spec.path == "/var/lib/monitoring/grafana" and settings.dest == "/b"
    rules = component_module_rules()
    assert ("type", "path", ["path"]) in rules["required_if"] and ("config", "path") in rules["mutually_exclusive"]


@pytest.mark.docker
def test_backup_change_restore_gives_back_exactly_the_files_and_the_drill_compares(tmp_path):
    """The restore asks Docker which containers bind-mount the directory (none here), hence docker."""
    if _docker_ready():
        pytest.skip(_docker_ready())
    root = str(tmp_path / "grafana")
    _grafana_like(root)
    before = _snapshot(root)
    settings = _settings(tmp_path)
    spec = bk.ComponentSpec(name="grafana", type="path", path=root, stop_owners=False)
    result = bk.run_backup(spec, settings)
    assert [a["name"] for a in result.artifacts] == ["path.tar.zst"] and result.artifacts[0]["kind"] == "tar"
    facts = json.loads(open(os.path.join(result.path, "manifest.json"), encoding="utf-8").read())["facts"]
    assert facts["files"] == 3 and facts["symlinks"] == 1 and facts["file_bytes"] == 64 * 1024 + 16
    assert facts["stopped"] == [] and facts["path"] == root

    # Content, modes, an added and a removed file, a directory's mode, the directory's own mode.
    with open(os.path.join(root, "grafana.db"), "r+b") as handle:
        handle.write(b"changed")
    os.chmod(os.path.join(root, "empty"), 0o666)
    os.unlink(os.path.join(root, "current"))
    os.chmod(os.path.join(root, "plugins", "panel"), 0o755)
    os.rmdir(os.path.join(root, "png"))
    with open(os.path.join(root, "later.txt"), "w", encoding="utf-8") as handle:
        handle.write("created after the backup\n")
    os.chmod(root, 0o777)
    assert _snapshot(root) != before

    plan = bk.plan_restore(spec, settings)
    assert plan["into"] == root and plan["verified"] and "swap the content" in plan["steps"][1]
    restored = bk.run_restore(spec, settings)
    assert restored["restored"] == ["path.tar.zst"]
    assert _snapshot(root) == before  # exactly the files, nothing left over (.opsbook-restore, later.txt)

    drill = bk.run_drill(spec, settings)
    assert drill["matches_source"] is True and drill["files"] == 3
    assert not os.path.exists(drill["directory"])  # the scratch copy is gone
    assert (
        'opsbook_backup_restore_drill_ok{component="grafana",type="path"} 1'
        in open(result.metrics_file, encoding="utf-8").read()
    )

    # A new host: the directory does not exist yet; the restore creates it with the recorded mode and owner.
    os.chmod(os.path.join(root, "plugins", "panel"), 0o755)
    for base, dirs, files in os.walk(root, topdown=False):
        for name in files:
            os.unlink(os.path.join(base, name))
        for name in dirs:
            path = os.path.join(base, name)
            os.unlink(path) if os.path.islink(path) else os.rmdir(path)
    os.rmdir(root)
    bk.run_restore(spec, settings)
    assert _snapshot(root) == before


def test_a_drill_fails_when_the_extracted_tree_differs_from_the_record(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "a").write_bytes(b"x" * 4096)
    settings = _settings(tmp_path)
    spec = bk.ComponentSpec(name="data", type="path", path=str(root), stop_owners=False)
    result = bk.run_backup(spec, settings)
    assert bk.run_drill(spec, settings)["matches_source"] is True
    manifest_path = os.path.join(result.path, "manifest.json")
    manifest = json.loads(open(manifest_path, encoding="utf-8").read())
    manifest["facts"]["tree_sha256"] = "0" * 64  # as if an entry had been archived wrong
    with open(manifest_path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
    with pytest.raises(bk.BackupError) as err:
        bk.run_drill(spec, settings)
    assert err.value.exit_code == bk.EXIT_DRILL and "differs from the one backed up" in err.value.message
    assert [n for n in os.listdir(os.path.dirname(result.path)) if n.startswith(".drill-")] == []


def test_the_tree_of_the_archive_is_the_tree_of_the_directory(tmp_path):
    root = str(tmp_path / "g")
    _grafana_like(root)
    spec = bk.ComponentSpec(name="g", type="path", path=root, stop_owners=False)
    result = bk.run_backup(spec, _settings(tmp_path))
    facts = json.loads(open(os.path.join(result.path, "manifest.json"), encoding="utf-8").read())["facts"]
    assert facts["tree_sha256"] == tree_digest(tree_of(root))


@pytest.mark.docker
def test_the_containers_that_bind_mount_it_are_stopped_and_started(tmp_path):
    """A labelled container with the directory bind-mounted (as Grafana has it) is stopped for the archive and the
    swap, and runs again after each; node-exporter's kind, a mount of a parent, is left alone."""
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    client = DockerClient()
    root = tmp_path / "grafana"
    root.mkdir()
    (root / "grafana.db").write_bytes(b"g" * 8192)
    owner = "%spath-owner-%s" % (PREFIX, secrets.token_hex(3))
    parent = "%spath-parent-%s" % (PREFIX, secrets.token_hex(3))
    idle = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]  # writes nothing, stops at once
    try:
        _create(
            client,
            owner,
            Image=IMAGES["redis"],
            Cmd=idle,
            Labels={"opsbook.backup.stop": "true"},
            HostConfig={"Binds": ["%s:/data" % root], "NetworkMode": "none"},
        )
        _create(
            client,
            parent,
            Image=IMAGES["redis"],
            Cmd=idle,
            HostConfig={"Binds": ["%s:/host:ro" % tmp_path], "NetworkMode": "none"},
        )
        for name in (owner, parent):
            client.start_container(name)
        owner_id = client.inspect_container(owner)["Id"]
        settings = _settings(tmp_path)
        spec = bk.ComponentSpec(name="grafana", type="path", path=str(root))
        engine = bk.engine_for(spec, settings, client)
        assert [o["Id"] for o in engine.owners()] == [owner_id]
        result = bk.run_backup(spec, settings)
        facts = json.loads(open(os.path.join(result.path, "manifest.json"), encoding="utf-8").read())["facts"]
        assert facts["stopped"] == [owner_id]
        assert client.inspect_container(owner)["State"]["Running"]
        started = client.inspect_container(owner)["State"]["StartedAt"]

        _sh(owner, "sh", "-c", "echo changed > /data/grafana.db && echo new > /data/new")
        bk.run_restore(spec, settings)
        state = client.inspect_container(owner)["State"]
        assert state["Running"] and state["StartedAt"] != started  # stopped for the swap, started again
        assert _sh(owner, "sh", "-c", "cat /data/grafana.db | wc -c; ls -A /data").split() == ["8192", "grafana.db"]
        assert client.inspect_container(parent)["State"]["Running"]
    finally:
        for name in (owner, parent):
            client.remove_container(name, force=True)
