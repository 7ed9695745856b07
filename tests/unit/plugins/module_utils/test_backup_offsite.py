# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Off-host copies (_backup/offsite.py) against the real borg, no mock of it.

The SSH side is the forced command the backup role puts in authorized_keys (``borg serve --append-only
--restrict-to-repository``), run by a script that OPSBOOK_BORG_RSH names instead of ssh; the repository is then
``ssh://x<path>``. The repository host's own jobs (prune) use the local path, with a borg base directory of their
own, as the trusted host does. The molecule scenario runs the same against a real sshd.

borg starts in about half a second (a second through the forced command, which starts a second borg): the
archives are few and of 64 KiB.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import calendar
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import typing as t
from dataclasses import dataclass
from pathlib import Path

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils._backup import jobs, offsite, store
from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import EXIT_OFFSITE, EXIT_VERIFY, BackupError
from ansible_collections.opsbook.stack.plugins.module_utils._backup.spec import ComponentSpec, Settings
from ansible_collections.opsbook.stack.plugins.module_utils._backup.state import load_state

BORG = shutil.which("borg") or "borg"
pytestmark = pytest.mark.skipif(shutil.which("borg") is None, reason="needs borg (./dev deps installs borgbackup)")

ARTIFACT = "dump.rdb.zst"
ARTIFACT_BYTES = 64 * 1024
PASSPHRASE = "correct horse battery staple\n"
IDS = ("20261201T000000Z", "20261202T000000Z", "20261203T000000Z", "20261204T000000Z", "20261205T000000Z")
# The directory holding ansible_collections/ (build/collections, or ansible-test's tree): the CLI's PYTHONPATH.
COLLECTIONS = str(Path(offsite.__file__).parents[6])
UNREACHABLE = "ssh: connect to host backup port 22: Connection refused"
TRANSACTION_RE = re.compile(r"^transaction (\d+), UTC time ")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BORG_", "OPSBOOK_"))}
    env.update(LANG="C.UTF-8", **extra)
    return env


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n", encoding="utf-8")
    path.chmod(0o755)
    return str(path)


def commit_backup(st: store.Store, backup_id: str, wrong_sha256: bool = False) -> store.Manifest:
    """A committed backup of 64 KiB of random bytes, as a run leaves it: <id>.partial/, manifest, commit.
    wrong_sha256: the manifest lists a sha256 that is not the artifact's."""
    partial = st.partial_path(backup_id)
    os.makedirs(partial)
    payload = secrets.token_bytes(ARTIFACT_BYTES)
    with open(os.path.join(partial, ARTIFACT), "wb") as handle:
        handle.write(payload)
    digest = hashlib.sha256(b"not the artifact" if wrong_sha256 else payload).hexdigest()
    created = float(calendar.timegm(time.strptime(backup_id, "%Y%m%dT%H%M%SZ")))
    manifest = store.Manifest(
        backup_id, "redis", "redis", created, 0.1, [store.Artifact(ARTIFACT, "rdb", len(payload), digest, len(payload))]
    )
    store.write_json_atomic(os.path.join(partial, store.MANIFEST), manifest.to_dict())
    st.commit(backup_id)
    return manifest


def metrics(settings: Settings, component: str = "redis") -> dict[str, float]:
    """The samples of <metrics_dir>/opsbook_backup_<component>.prom, by metric name."""
    text = Path(settings.metrics_dir, "opsbook_backup_%s.prom" % component).read_text(encoding="utf-8")
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name.split("{", 1)[0]] = float(value)
    return found


@dataclass
class Offhost:
    """A borg repository reachable through the forced command, and the job settings of a host using it."""

    root: Path
    repo: str  # the repository's local path (the repository host's view)
    passphrase_file: str
    rsh: str  # the forced command, as ssh would run it
    unreachable: str  # an ssh that cannot connect
    settings: Settings
    spec: ComponentSpec
    backups: store.Store  # the client job's backups of redis

    @property
    def location(self) -> str:
        return "ssh://x" + self.repo

    def segments(self) -> list[str]:
        return glob.glob(os.path.join(self.repo, "data", "*", "*"))

    def data_bytes(self) -> int:
        return sum(os.path.getsize(p) for p in self.segments())

    def client(self, name: str) -> Settings:
        """The settings of another host (its own dest, so its own borg base directory) using the repository."""
        return Settings(
            dest=str(self.root / name / "dest"),
            metrics_dir=str(self.root / name / "metrics"),
            offsite={"repository": self.location, "passphrase_file": self.passphrase_file},
        )

    def trusted(self, **keep: t.Any) -> Settings:
        """The repository host's prune job: the local path, a base directory of its own, a history file."""
        return Settings(
            dest=str(self.root / "trusted" / "dest"),
            offsite={
                "repository": self.repo,
                "passphrase_file": self.passphrase_file,
                "base_dir": str(self.root / "trusted" / "borg"),
                "history_file": str(self.root / "trusted" / "archives-seen.json"),
                **keep,
            },
        )

    def borg(
        self, *args: str, base_dir: str = "", cwd: str | None = None, check: bool = True, **env: str
    ) -> subprocess.CompletedProcess:
        """borg run by the test itself (through the forced command for an ssh:// location). Without base_dir, a
        new one each time: borg remembers the newest manifest it saw, and these looks must not change that."""
        base_dir = base_dir or tempfile.mkdtemp(prefix="look-", dir=self.root)
        proc = subprocess.run(
            [BORG, *args],
            cwd=cwd,
            env=_clean_env(
                BORG_PASSCOMMAND="cat %s" % self.passphrase_file, BORG_BASE_DIR=base_dir, BORG_RSH=self.rsh, **env
            ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check:
            assert proc.returncode == 0, "borg %s: exit %d: %s" % (" ".join(args), proc.returncode, proc.stderr)
        return proc

    def names(self, base_dir: str = "") -> list[str]:
        """The archives the repository lists, read on the repository host."""
        listed = json.loads(self.borg("list", "--json", self.repo, base_dir=base_dir).stdout)["archives"]
        return sorted(a["name"] for a in listed)

    def push(self, source: store.Store, backup_id: str) -> None:
        """Create the archive of a committed backup through the forced command, as run_offsite does."""
        self.borg(
            "create",
            "--compression",
            "none",
            "%s::redis-%s" % (self.location, backup_id),
            backup_id,
            base_dir=str(self.root / "pusher"),
            cwd=source.root,
        )


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One borg init (as the repository host runs it) per module; every test gets a copy of it."""
    root = tmp_path_factory.mktemp("borg-template")
    (root / "passphrase").write_text(PASSPHRASE, encoding="utf-8")
    env = _clean_env(BORG_PASSCOMMAND="cat %s" % (root / "passphrase"), BORG_BASE_DIR=str(root / "init-borg"))
    proc = subprocess.run(
        [BORG, "init", "-e", "repokey-blake2", str(root / "repo")], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return root / "repo"


@pytest.fixture
def offhost(template_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Offhost:
    """An empty repository and a client job (component redis) whose borg reaches it only through the
    append-only forced command."""
    repo = tmp_path / "repo"
    shutil.copytree(template_repo, repo)
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(PASSPHRASE, encoding="utf-8")
    passphrase.chmod(0o600)
    rsh = _script(tmp_path / "forced-command", "exec borg serve --append-only --restrict-to-repository %s" % repo)
    unreachable = _script(tmp_path / "no-route", "echo '%s' >&2\nexit 255" % UNREACHABLE)
    monkeypatch.setenv("OPSBOOK_BORG_RSH", rsh)
    settings = Settings(
        dest=str(tmp_path / "dest"),
        metrics_dir=str(tmp_path / "metrics"),
        offsite={"repository": "ssh://x%s" % repo, "passphrase_file": str(passphrase)},
    )
    spec = ComponentSpec(name="redis", type="redis", container="c")
    return Offhost(
        tmp_path, str(repo), str(passphrase), rsh, unreachable, settings, spec, store.Store(settings.dest, "redis")
    )


def test_copies_every_committed_backup_oldest_first_each_verified(offhost: Offhost) -> None:
    for backup_id in IDS[:3]:
        commit_backup(offhost.backups, backup_id)

    result = offsite.run_offsite(offhost.spec, offhost.settings)

    assert result["copied"] == list(IDS[:3])
    assert result["verified"] == list(IDS[:3])
    listed = json.loads(offhost.borg("list", "--json", offhost.repo).stdout)["archives"]
    by_creation = [a["name"] for a in sorted(listed, key=lambda a: a["start"])]
    assert by_creation == ["redis-%s" % i for i in IDS[:3]]  # oldest first
    # An archive holds <id>/ with the artifact and the manifest, byte for byte.
    newest = offhost.backups.path(IDS[2])
    contents = offhost.borg("list", "--format", "{path} {sha256}{NL}", "%s::redis-%s" % (offhost.repo, IDS[2]))
    for name in (ARTIFACT, store.MANIFEST):
        digest = hashlib.sha256(Path(newest, name).read_bytes()).hexdigest()
        assert "%s/%s %s" % (IDS[2], name, digest) in contents.stdout.splitlines()
    values = metrics(offhost.settings)
    assert values["opsbook_backup_offsite_last_exit_code"] == 0
    assert values["opsbook_backup_offsite_pending"] == 0
    assert values["opsbook_backup_offsite_last_bytes"] == 3 * ARTIFACT_BYTES

    again = offsite.run_offsite(offhost.spec, offhost.settings)
    assert again["copied"] == []
    assert again["pending"] == 0
    assert metrics(offhost.settings)["opsbook_backup_offsite_last_exit_code"] == 0


def test_unreachable_host_fails_naming_the_target_and_loses_nothing(
    offhost: Offhost, monkeypatch: pytest.MonkeyPatch
) -> None:
    for backup_id in IDS[:2]:
        commit_backup(offhost.backups, backup_id)
    monkeypatch.setenv("OPSBOOK_BORG_RSH", offhost.unreachable)

    with pytest.raises(BackupError) as failed:
        offsite.run_offsite(offhost.spec, offhost.settings)

    assert failed.value.exit_code == EXIT_OFFSITE
    assert offhost.location in failed.value.message
    assert "unreachable" in failed.value.message
    values = metrics(offhost.settings)
    assert values["opsbook_backup_offsite_last_exit_code"] == EXIT_OFFSITE
    assert values["opsbook_backup_offsite_pending"] == 2
    assert "opsbook_backup_offsite_last_success_timestamp_seconds" not in values

    monkeypatch.setenv("OPSBOOK_BORG_RSH", offhost.rsh)
    result = offsite.run_offsite(offhost.spec, offhost.settings)
    assert result["copied"] == list(IDS[:2])
    values = metrics(offhost.settings)
    assert values["opsbook_backup_offsite_last_exit_code"] == 0
    assert values["opsbook_backup_offsite_pending"] == 0


def test_wrong_passphrase_fails_and_marks_nothing_verified(offhost: Offhost) -> None:
    commit_backup(offhost.backups, IDS[0])
    offsite.run_offsite(offhost.spec, offhost.settings)
    commit_backup(offhost.backups, IDS[1])
    Path(offhost.passphrase_file).write_text("not the passphrase\n", encoding="utf-8")

    with pytest.raises(BackupError) as failed:
        offsite.run_offsite(offhost.spec, offhost.settings)

    assert failed.value.exit_code == EXIT_OFFSITE
    assert "passphrase is wrong" in failed.value.message
    assert offhost.location in failed.value.message
    assert load_state(offhost.backups)["offsite_verified"] == [IDS[0]]  # the new backup is not
    values = metrics(offhost.settings)
    assert values["opsbook_backup_offsite_last_exit_code"] == EXIT_OFFSITE
    assert values["opsbook_backup_offsite_pending"] == 1


def test_a_remote_copy_that_does_not_match_its_manifest_does_not_count(offhost: Offhost) -> None:
    commit_backup(offhost.backups, IDS[0])
    commit_backup(offhost.backups, IDS[1])
    other = store.Store(str(offhost.root / "other"), "redis")  # an archive of that name, other bytes
    commit_backup(other, IDS[1])
    offhost.push(other, IDS[1])

    with pytest.raises(BackupError) as failed:
        offsite.run_offsite(offhost.spec, offhost.settings)

    assert failed.value.exit_code == EXIT_OFFSITE
    assert "off-host copy of redis %s" % IDS[1] in failed.value.message
    assert "does not match its manifest" in failed.value.message
    assert ARTIFACT in failed.value.message
    # The one before it was copied and verified, and counts as off-host; the mismatching one does not.
    assert load_state(offhost.backups)["offsite_verified"] == [IDS[0]]
    values = metrics(offhost.settings)
    assert values["opsbook_backup_offsite_last_exit_code"] == EXIT_OFFSITE
    assert values["opsbook_backup_offsite_pending"] == 1


def test_local_retention_keeps_backups_whose_copy_is_pending(offhost: Offhost, monkeypatch: pytest.MonkeyPatch) -> None:
    for backup_id in IDS[:2]:
        commit_backup(offhost.backups, backup_id)
    spec = ComponentSpec(name="redis", type="redis", container="c", keep_last=1, keep_daily=0, keep_weekly=0)
    newest = IDS[1]
    assert offhost.settings.offsite  # jobs._do_backup keeps the pending copies when the job has a repository
    monkeypatch.setenv("OPSBOOK_BORG_RSH", offhost.unreachable)
    with pytest.raises(BackupError):
        offsite.run_offsite(spec, offhost.settings)
    state = load_state(offhost.backups)
    assert state["offsite_verified"] == []
    pending = jobs.offsite_pending(offhost.backups, state)
    assert pending == list(IDS[:2])
    assert store.select_keep(offhost.backups.manifests(), 1, 0, 0, newest) == {newest}  # keep_last=1 alone
    assert store.prune(offhost.backups, spec, newest, also_keep=pending) == []
    assert [m.id for m in offhost.backups.manifests()] == list(IDS[:2])

    monkeypatch.setenv("OPSBOOK_BORG_RSH", offhost.rsh)
    offsite.run_offsite(spec, offhost.settings)
    state = load_state(offhost.backups)
    assert state["offsite_verified"] == list(IDS[:2])
    pending = jobs.offsite_pending(offhost.backups, state)
    assert pending == []
    assert store.prune(offhost.backups, spec, newest, also_keep=pending) == [IDS[0]]
    assert [m.id for m in offhost.backups.manifests()] == [newest]


def test_flipped_byte_in_the_repository_fails_the_check_and_the_fetch(offhost: Offhost) -> None:
    commit_backup(offhost.backups, IDS[0])
    offsite.run_offsite(offhost.spec, offhost.settings)
    assert offsite.run_check(offhost.spec, offhost.settings)["check_ok"] is True
    assert metrics(offhost.settings)["opsbook_backup_offsite_check_ok"] == 1
    largest = max(offhost.segments(), key=os.path.getsize)
    size = os.path.getsize(largest)
    assert size > ARTIFACT_BYTES  # the segment holding the artifact's data
    with open(largest, "r+b") as handle:
        handle.seek(size // 2)
        byte = handle.read(1)
        handle.seek(size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))

    with pytest.raises(BackupError) as failed:
        offsite.run_check(offhost.spec, offhost.settings)

    assert failed.value.exit_code == EXIT_OFFSITE
    assert offhost.location in failed.value.message
    assert "the repository is damaged" in failed.value.message
    assert metrics(offhost.settings)["opsbook_backup_offsite_check_ok"] == 0

    fresh = offhost.client("fresh-host")
    with pytest.raises(BackupError) as fetched:
        offsite.fetch(offhost.spec, fresh, IDS[0])
    assert fetched.value.exit_code in (EXIT_OFFSITE, EXIT_VERIFY)
    local = store.Store(fresh.dest, "redis")
    assert local.manifests() == []
    assert [e for e in os.listdir(local.root) if e.startswith((IDS[0], ".fetch-"))] == []


def test_fetch_onto_a_fresh_host_commits_the_newest_backup_verified(offhost: Offhost) -> None:
    for backup_id in IDS[:2]:
        commit_backup(offhost.backups, backup_id)
    offsite.run_offsite(offhost.spec, offhost.settings)
    fresh = offhost.client("fresh-host")

    assert offsite.plan_fetch(offhost.spec, fresh)["fetched"] is True
    assert not os.path.exists(os.path.join(fresh.dest, "redis", IDS[1]))  # check mode brings nothing
    result = offsite.fetch(offhost.spec, fresh)

    assert result["fetched"] is True
    assert result["backup_id"] == IDS[1]
    local = store.Store(fresh.dest, "redis")
    assert [m.id for m in local.manifests()] == [IDS[1]]
    assert local.verify(local.get(IDS[1])) == []
    for name in (store.MANIFEST, ARTIFACT):
        assert Path(local.path(IDS[1]), name).read_bytes() == Path(offhost.backups.path(IDS[1]), name).read_bytes()
    assert load_state(local)["offsite_verified"] == [IDS[1]]
    assert offsite.plan_fetch(offhost.spec, fresh)["fetched"] is False

    # A newer archive whose files do not match the manifest it carries is refused, and nothing is committed.
    other = store.Store(str(offhost.root / "other"), "redis")
    commit_backup(other, IDS[2], wrong_sha256=True)
    offhost.push(other, IDS[2])
    with pytest.raises(BackupError) as refused:
        offsite.fetch(offhost.spec, fresh)
    assert refused.value.exit_code == EXIT_VERIFY
    assert "redis-%s" % IDS[2] in refused.value.message
    assert "fails verification" in refused.value.message
    assert [m.id for m in local.manifests()] == [IDS[1]]
    assert sorted(e for e in os.listdir(local.root) if e.startswith(("2026", ".fetch-"))) == [IDS[1]]  # no leftover


def test_append_only_deletion_by_a_client_is_refused_by_the_prune_and_rolled_back(
    offhost: Offhost, monkeypatch: pytest.MonkeyPatch
) -> None:
    for backup_id in IDS[:2]:
        commit_backup(offhost.backups, backup_id)
        offhost.push(offhost.backups, backup_id)
    names = ["redis-%s" % i for i in IDS[:2]]
    trusted = offhost.trusted(keep_last=10)
    monkeypatch.delenv("OPSBOOK_BORG_RSH")
    assert offsite.prune_remote(trusted)["deleted"] == []  # its history now records both archives
    before_bytes = offhost.data_bytes()
    before_log = Path(offhost.repo, "transactions").read_text(encoding="utf-8").splitlines()

    # The client, through its forced command: the repository cannot go ...
    whole = offhost.borg("delete", "--force", offhost.location, check=False, BORG_DELETE_I_KNOW_WHAT_I_AM_DOING="YES")
    assert whole.returncode != 0
    assert "append-only mode" in whole.stderr
    assert os.path.isfile(os.path.join(offhost.repo, "config"))
    # ... an archive can, as far as the listing shows.
    assert offhost.borg("delete", "%s::%s" % (offhost.location, names[0])).returncode == 0

    with pytest.raises(BackupError) as refused:
        offsite.prune_remote(trusted)

    assert refused.value.exit_code == EXIT_OFFSITE
    assert names[0] in refused.value.message
    assert "gone" in refused.value.message
    assert offhost.names() == names[1:]  # nothing else deleted
    assert offhost.data_bytes() >= before_bytes  # nothing compacted: the deleted archive's data is still there
    seen = json.loads(Path(trusted.offsite["history_file"]).read_text(encoding="utf-8"))
    assert seen["archives"] == names  # the next prune refuses too

    # The rollback of docs/offsite-backups.md, to the last transaction before the client's delete.
    log = Path(offhost.repo, "transactions").read_text(encoding="utf-8").splitlines()
    delete_at = next(i for i, line in enumerate(log) if i >= len(before_log) or line != before_log[i])
    numbers = [int(TRANSACTION_RE.match(line).group(1)) for line in log]  # type: ignore[union-attr]
    good = numbers[delete_at - 1]
    assert numbers[delete_at] > good
    for segment in offhost.segments():
        if int(os.path.basename(segment)) > good:
            os.unlink(segment)
    for pattern in ("index.*", "hints.*", "integrity.*"):
        for path in glob.glob(os.path.join(offhost.repo, pattern)):
            os.unlink(path)
    offhost.borg("check", "--repository-only", offhost.repo, base_dir=trusted.offsite["base_dir"])

    assert offhost.names(trusted.offsite["base_dir"]) == names
    result = offsite.prune_remote(trusted)  # and the prune runs again
    assert result["deleted"] == []
    assert result["archives"] == 2


def test_prune_remote_keeps_retention_and_the_newest_archive_that_verifies(
    offhost: Offhost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPSBOOK_BORG_RSH")
    made = store.Store(str(offhost.root / "made"), "redis")
    trusted = offhost.trusted(keep_last=1, keep_daily=2, keep_weekly=0, keep_monthly=0)

    def archive(backup_id: str, wrong_sha256: bool = False) -> None:
        """An archive as run_offsite makes it, created on the repository host (quicker than through ssh)."""
        commit_backup(made, backup_id, wrong_sha256)
        offhost.borg(
            "create",
            "--compression",
            "none",
            "%s::redis-%s" % (offhost.repo, backup_id),
            backup_id,
            base_dir=trusted.offsite["base_dir"],
            cwd=made.root,
        )

    for backup_id in IDS[:4]:  # four days
        archive(backup_id)
    before = offhost.data_bytes()

    result = offsite.prune_remote(trusted)

    assert sorted(result["deleted"]) == ["redis-%s" % i for i in IDS[:2]]
    assert result["newest_verified"] == {"redis": IDS[3]}
    assert offhost.data_bytes() < before - 2 * ARTIFACT_BYTES  # compacted: their space is free
    seen = json.loads(Path(trusted.offsite["history_file"]).read_text(encoding="utf-8"))
    assert seen["archives"] == ["redis-%s" % i for i in IDS[2:4]]  # the newest two days, as borg lists them

    # The newest archive does not verify (its manifest's sha256 is not its artifact's). Retention alone keeps it
    # only (keep_last 1); the prune keeps the newest one that verifies as well.
    archive(IDS[4], wrong_sha256=True)
    result = offsite.prune_remote(offhost.trusted(keep_last=1, keep_daily=0, keep_weekly=0, keep_monthly=0))

    assert result["newest_verified"] == {"redis": IDS[3]}
    assert result["deleted"] == ["redis-%s" % IDS[2]]
    assert offhost.names() == ["redis-%s" % i for i in IDS[3:5]]


def test_cli_offsite_exit_codes(offhost: Offhost) -> None:
    commit_backup(offhost.backups, IDS[0])
    job = offhost.root / "backup.json"
    job.write_text(
        json.dumps(
            {
                "dest": offhost.settings.dest,
                "metrics_dir": offhost.settings.metrics_dir,
                "offsite": offhost.settings.offsite,
                "components": {"redis": {"type": "redis", "container": "c"}},
            }
        ),
        encoding="utf-8",
    )

    def cli(rsh: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ansible_collections.opsbook.stack.plugins.module_utils._backup"]
            + ["--config", str(job), "offsite", "redis"],
            env=_clean_env(PYTHONPATH=COLLECTIONS, OPSBOOK_BORG_RSH=rsh),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    down = cli(offhost.unreachable)
    assert down.returncode == EXIT_OFFSITE, down.stderr
    named = [line for line in down.stderr.splitlines() if offhost.location in line]
    assert named and "unreachable" in named[0], down.stderr
    assert metrics(offhost.settings)["opsbook_backup_offsite_pending"] == 1

    up = cli(offhost.rsh)
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["copied"] == [IDS[0]]
    assert metrics(offhost.settings)["opsbook_backup_offsite_pending"] == 0


def test_the_check_makes_a_copy_gone_from_the_repository_pending_and_the_next_run_copies_it(offhost: Offhost) -> None:
    for backup_id in IDS[:2]:
        commit_backup(offhost.backups, backup_id)
    assert offsite.run_offsite(offhost.spec, offhost.settings)["copied"] == list(IDS[:2])
    # A client deletes one archive through the forced command (append-only only hides it from the listing).
    offhost.borg("delete", "%s::redis-%s" % (offhost.location, IDS[0]))
    # A copy run does not list the repository: it trusts the job's record until the check compares it.
    assert offsite.run_offsite(offhost.spec, offhost.settings)["copied"] == []

    checked = offsite.run_check(offhost.spec, offhost.settings)

    assert checked["gone_from_repository"] == [IDS[0]]
    assert checked["pending"] == 1
    assert metrics(offhost.settings)["opsbook_backup_offsite_pending"] == 1
    again = offsite.run_offsite(offhost.spec, offhost.settings)
    assert again["copied"] == [IDS[0]] and again["pending"] == 0
    assert "redis-%s" % IDS[0] in offhost.names()


def test_an_archive_left_unverified_by_an_earlier_run_is_verified_not_created_again(offhost: Offhost) -> None:
    commit_backup(offhost.backups, IDS[0])
    # An earlier run created the archive and ended before its verification (killed): the state does not list it.
    offhost.push(offhost.backups, IDS[0])

    result = offsite.run_offsite(offhost.spec, offhost.settings)

    assert result["copied"] == [] and result["verified"] == [IDS[0]], result
    assert result["pending"] == 0
    assert offhost.names() == ["redis-%s" % IDS[0]]
