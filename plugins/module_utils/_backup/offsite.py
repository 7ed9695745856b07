# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Off-host copies of committed backups with borg, verified against the manifest from the copy itself.

Private to this collection: not a public API, it may change in any release.

The transfer, the encryption at rest and the append-only guarantee are borg's (docs/offsite-backups.md says why
borg and not restic): this file only decides what to copy, runs ``borg`` and compares what the repository holds
with the manifest. Every committed backup ``<dest>/<component>/<id>/`` becomes the archive ``<component>-<id>``
holding ``<id>/`` (its artifacts and manifest.json). A backup counts as off-host only once ``borg list`` of the
archive, reading the data back from the repository, gives every artifact's size and sha256 as the manifest has
them. Until then it is pending: local retention keeps it, and the next run copies every pending backup (a queue,
oldest first), so an unreachable, full or misconfigured repository delays copies and loses none.

Who does what: the protected host creates archives, verifies them, checks the repository and restores from it,
through an SSH key whose forced command is ``borg serve --append-only``; it can never free anything in the
repository. Retention (``borg delete`` + ``borg compact``) runs on the repository's own (trusted) host, which
refuses to prune when archives it has seen are gone without its doing (a client deleting in append-only mode),
because a compact would make that deletion permanent.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import calendar
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import typing as t
from dataclasses import dataclass

from ansible_collections.opsbook.stack.plugins.module_utils import _files
from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import (
    EXIT_OFFSITE,
    EXIT_USAGE,
    EXIT_VERIFY,
    BackupError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.jobs import (
    LOCK,
    job_lock,
    offsite_pending,
    require_decryptable,
    run_backup,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.registry import engine_for
from ansible_collections.opsbook.stack.plugins.module_utils._backup.spec import (
    BOOL,
    INT,
    NUMBER,
    STR,
    ComponentSpec,
    Settings,
    check_types,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.state import load_state, save_state, write_metrics
from ansible_collections.opsbook.stack.plugins.module_utils._backup.store import (
    MANIFEST,
    Manifest,
    Store,
    select_keep,
    write_json_atomic,
)

ID_RE = re.compile(r"^(?P<component>.+)-(?P<id>\d{8}T\d{6}Z)$")

OFFSITE_TYPES = {
    "repository": STR,
    "passphrase_file": STR,
    "ssh_key": STR,
    "known_hosts": STR,
    "borg": STR,
    "remote_path": STR,
    "base_dir": STR,
    "compression": STR,
    "timeout": NUMBER,
    "connect_timeout": INT,
    "keep_last": INT,
    "keep_daily": INT,
    "keep_weekly": INT,
    "keep_monthly": INT,
    "check_max_duration": INT,
    "check_verify_data": BOOL,
    "history_file": STR,
}

# What borg or ssh print, and the cause an operator acts on (first match wins).
CAUSES = (
    (
        ("passphrase supplied in", "passphrase is incorrect", "passphrase incorrect"),
        "the repository passphrase is wrong",
    ),
    (("No space left on device", "Insufficient free space", "Errno 28", "ENOSPC"), "the repository's disk is full"),
    (
        ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "the repository host's SSH key is unknown or changed",
    ),
    (("Permission denied (publickey",), "the repository host refused this host's SSH key"),
    (
        (
            "Connection refused",
            "Connection timed out",
            "No route to host",
            "Could not resolve hostname",
            "Name or service not known",
            "Connection closed by remote host",
            "Connection reset",
            "Network is unreachable",
            "Broken pipe",
            "timed out after",
        ),
        "the repository host is unreachable",
    ),
    (
        (
            "IntegrityError",
            "Data integrity error",
            "checksum mismatch",
            "MAC mismatch",
            "Index object count mismatch",
            "Segment entry checksum",
            "errors found",
        ),
        "the repository is damaged",
    ),
    (
        ("does not exist", "is not a valid repository", "Repository not found"),
        "there is no borg repository at the target",
    ),
    (
        ("Failed to create/acquire the lock", "lock.exclusive", "LockTimeout"),
        "another borg process holds the repository's lock",
    ),
    (("append-only mode",), "the repository refuses it (append-only mode)"),
)


class OffsiteError(Exception):
    """A borg run that failed, with the cause in words and borg's own last lines."""

    def __init__(self, cause: str, detail: str, returncode: int | None = None):
        self.cause = cause
        self.detail = detail
        self.returncode = returncode
        super().__init__("%s (%s)" % (cause, detail))


def classify(stderr: str, returncode: int | None) -> str:
    for needles, cause in CAUSES:
        if any(n in stderr for n in needles):
            return cause
    return "borg exited %s" % returncode


def _last_lines(text: str, n: int = 3) -> str:
    lines = [
        ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.startswith(("  File ", "Traceback"))
    ]
    return " | ".join(lines[-n:])[-600:] or "no output"


@dataclass
class Offsite:
    """The off-host repository of a job file (its ``offsite`` mapping)."""

    repository: str
    passphrase_file: str
    ssh_key: str = ""
    known_hosts: str = ""
    borg: str = "borg"
    remote_path: str = ""
    base_dir: str = ""  # BORG_BASE_DIR (borg's cache and security records); empty: <dest>/.borg
    compression: str = "none"  # the artifacts are zstd (and maybe age) already
    timeout: float = 3600.0
    connect_timeout: int = 10
    keep_last: int = 1
    keep_daily: int = 7
    keep_weekly: int = 4
    keep_monthly: int = 6
    check_max_duration: int = 0  # borg check --max-duration (a partial repository check); 0: the whole repository
    check_verify_data: bool = False
    history_file: str = ""  # the trusted host's record of the archives it has seen (prune only)

    def __post_init__(self) -> None:
        check_types("offsite", self.__dict__, OFFSITE_TYPES)
        if not self.repository:
            raise BackupError(EXIT_USAGE, "offsite: repository is empty (set backup_offsite.repository)")
        if not self.passphrase_file:
            raise BackupError(
                EXIT_USAGE, "offsite: passphrase_file is empty (the role writes it from backup_offsite.passphrase)"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> Offsite:
        data = dict(settings.offsite or {})
        if not data:
            raise BackupError(
                EXIT_USAGE,
                "no off-host repository is configured for this job (backup_offsite.repository in the backup role)",
            )
        known = set(cls.__dataclass_fields__)  # pylint: disable=no-member
        unknown = sorted(set(data) - known)
        if unknown:
            raise BackupError(EXIT_USAGE, "offsite: unknown settings %s" % ", ".join(unknown))
        data.setdefault("base_dir", os.path.join(settings.dest, ".borg"))
        return cls(**data)

    @property
    def target(self) -> str:
        """The repository as the messages name it (it holds no secret: the passphrase is in a file)."""
        return self.repository


class Borg:
    """borg with this repository's environment: the passphrase read from its file by BORG_PASSCOMMAND (never in
    an argument or the environment), ssh in batch mode with the job's key and known_hosts, a cache of its own."""

    def __init__(self, cfg: Offsite):
        self.cfg = cfg

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BORG_")}
        env.update(
            BORG_PASSCOMMAND="cat %s" % shlex.quote(self.cfg.passphrase_file),
            BORG_BASE_DIR=self.cfg.base_dir,
            BORG_RELOCATED_REPO_ACCESS_IS_OK="no",
            BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="no",
            BORG_HOSTNAME_IS_UNIQUE="yes",
            LANG="C.UTF-8",
            LC_ALL="C.UTF-8",
        )
        ssh = [
            "ssh",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=%d" % self.cfg.connect_timeout,
            "-o", "ServerAliveInterval=10",
            "-o", "ServerAliveCountMax=3",
        ]  # fmt: skip
        if self.cfg.ssh_key:
            ssh += ["-o", "IdentitiesOnly=yes", "-i", self.cfg.ssh_key]
        if self.cfg.known_hosts:
            ssh += ["-o", "UserKnownHostsFile=%s" % self.cfg.known_hosts, "-o", "StrictHostKeyChecking=yes"]
        env["BORG_RSH"] = os.environ.get("OPSBOOK_BORG_RSH") or " ".join(shlex.quote(a) for a in ssh)
        return env

    def run(
        self,
        args: list[str],
        cwd: str | None = None,
        timeout: float | None = None,
        stdout: t.Any = subprocess.PIPE,
        strict: bool = False,
    ) -> subprocess.CompletedProcess:
        """strict: exit code 1 (borg's warning) fails too; borg check reports the errors it found with it."""
        cmd = (
            [self.cfg.borg]
            + args[:1]
            + (["--remote-path", self.cfg.remote_path] if self.cfg.remote_path else [])
            + args[1:]
        )
        os.makedirs(self.cfg.base_dir, mode=0o700, exist_ok=True)
        try:
            proc = subprocess.run(
                cmd,
                check=False,
                cwd=cwd,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.PIPE,
                timeout=timeout or self.cfg.timeout,
            )
        except FileNotFoundError as exc:
            raise OffsiteError("borg is not installed on this host", str(exc)) from exc
        except subprocess.TimeoutExpired as exc:
            raise OffsiteError(
                "the repository host is unreachable", "borg %s timed out after %g s" % (args[0], exc.timeout)
            ) from exc
        err = proc.stderr.decode("utf-8", "replace") if isinstance(proc.stderr, bytes) else (proc.stderr or "")
        # borg: 0 success, 1 warning (the operation completed), 2 and up an error.
        if proc.returncode >= 2 or proc.returncode < 0 or (strict and proc.returncode != 0):
            raise OffsiteError(classify(err, proc.returncode), _last_lines(err), proc.returncode)
        return proc

    def location(self, archive: str = "") -> str:
        return self.cfg.repository + ("::" + archive if archive else "")

    def archives(self, component: str = "") -> dict[str, dict[str, t.Any]]:
        """The repository's archives (of one component when given): name -> borg's JSON entry."""
        args = ["list", "--json"]
        if component:
            args += ["--glob-archives", "%s-*" % component]
        out = self.run(args + [self.location()]).stdout
        try:
            listed = json.loads(out.decode("utf-8"))["archives"]
        except (ValueError, KeyError) as exc:
            raise OffsiteError("borg list gave no archive list", repr(out[:200])) from exc
        return {a["name"]: a for a in listed}

    def contents(self, archive: str) -> dict[str, tuple[int, str]]:
        """path -> (size, sha256) of every file of an archive, computed from the data the repository holds."""
        out = self.run(["list", "--format", "{type}\t{size}\t{sha256}\t{path}{NL}", self.location(archive)]).stdout
        found: dict[str, tuple[int, str]] = {}
        for line in out.decode("utf-8", "replace").splitlines():
            parts = line.split("\t", 3)
            if len(parts) == 4 and parts[0] == "-":
                found[parts[3]] = (int(parts[1]), parts[2])
        return found


def archive_name(component: str, backup_id: str) -> str:
    return "%s-%s" % (component, backup_id)


def remote_problems(borg: Borg, archive: str, manifest: Manifest, manifest_sha256: str) -> list[str]:
    """What the remote copy lacks next to the manifest (empty: it verifies)."""
    listed = borg.contents(archive)
    problems = []
    wanted = [(a.name, a.bytes, a.sha256) for a in manifest.artifacts]
    if manifest_sha256:
        wanted.append((MANIFEST, -1, manifest_sha256))
    for name, size, digest in wanted:
        path = "%s/%s" % (manifest.id, name)
        have = listed.get(path)
        if have is None:
            problems.append("%s: not in the remote archive %s" % (path, archive))
        elif size >= 0 and have[0] != size:
            problems.append("%s: %d bytes on the remote, the manifest says %d" % (path, have[0], size))
        elif have[1] != digest:
            problems.append("%s: sha256 %s on the remote, the manifest says %s" % (path, have[1], digest))
    return problems


def _failed(cfg: Offsite, what: str, exc: OffsiteError) -> BackupError:
    return BackupError(
        EXIT_OFFSITE,
        "%s to %s failed: %s (borg: %s)" % (what, cfg.target, exc.cause, exc.detail),
        {"target": cfg.target, "cause": exc.cause, "borg": exc.detail},
    )


def _record(settings: Settings, spec: ComponentSpec, store: Store, state: dict[str, t.Any]) -> None:
    try:
        save_state(store, state)
        write_metrics(settings, spec, state)
    except (OSError, BackupError):
        pass


def run_offsite(spec: ComponentSpec, settings: Settings) -> dict[str, t.Any]:
    """Copy every committed backup that has no verified off-host copy, oldest first, and verify each from the
    repository. Takes the job's lock; state and metrics record the attempt whatever its outcome."""
    cfg = Offsite.from_settings(settings)
    borg = Borg(cfg)
    store = Store(settings.dest, spec.name)
    os.makedirs(store.root, exist_ok=True)
    with job_lock(os.path.join(store.root, LOCK), "opsbook-backup offsite"):
        state = load_state(store)
        started = time.monotonic()
        result: dict[str, t.Any] = {"component": spec.name, "target": cfg.target, "copied": [], "verified": []}
        current = ""
        # No listing first (a borg start and a key unlock, as long as a small copy): the state says which backups
        # were verified off-host, and the weekly check (run_check) compares it with the repository's listing, so a
        # copy that vanished from the repository is pending again from then on.
        verified = set(state.get("offsite_verified") or [])
        try:
            copied_bytes = 0
            for m in store.manifests():
                if m.id in verified:
                    continue
                current = m.id
                name = archive_name(spec.name, m.id)
                try:
                    borg.run(
                        ["create", "--compression", cfg.compression, "--files-cache", "disabled",
                         borg.location(name), m.id],
                        cwd=store.root,
                    )  # fmt: skip
                    result["copied"].append(m.id)
                    copied_bytes += m.size
                except OffsiteError as exc:
                    if "already exists" not in exc.detail:
                        raise
                    # An earlier run created it and ended before its verification: verify it now.
                problems = remote_problems(borg, name, m, _files.sha256_file(os.path.join(store.path(m.id), MANIFEST)))
                if problems:
                    raise BackupError(
                        EXIT_OFFSITE,
                        "the off-host copy of %s %s in %s does not match its manifest: %s; it does not count as "
                        "off-host (run the repository check, docs/offsite-backups.md)"
                        % (spec.name, m.id, cfg.target, "; ".join(problems)),
                        {
                            "target": cfg.target,
                            "cause": "the remote copy does not match the manifest",
                            "problems": problems,
                        },
                    )
                verified.add(m.id)
                result["verified"].append(m.id)
            state["offsite_verified"] = sorted(i for i in verified if os.path.isdir(store.path(i)))
            state.update(
                offsite_last_exit_code=0,
                offsite_last_success=round(time.time(), 3),
                offsite_last_duration=round(time.monotonic() - started, 3),
            )
            if result["copied"]:
                state["offsite_last_bytes"] = copied_bytes
            result["bytes"] = copied_bytes
        except OffsiteError as exc:
            state["offsite_last_exit_code"] = EXIT_OFFSITE
            state["offsite_verified"] = sorted(verified)
            what = (
                "off-host copy of %s %s" % (spec.name, current)
                if current
                else "listing the off-host archives of %s" % spec.name
            )
            raise _failed(cfg, what, exc) from exc
        except BackupError:
            state["offsite_last_exit_code"] = EXIT_OFFSITE
            # The copies verified before the one that does not match count (as after a borg failure).
            state["offsite_verified"] = sorted(verified)
            raise
        finally:
            state["offsite_last_attempt"] = round(time.time(), 3)
            state["offsite_pending"] = len(offsite_pending(store, state))
            result["pending"] = state["offsite_pending"]
            result["duration_s"] = round(time.monotonic() - started, 3)
            _record(settings, spec, store, state)
        return result


def backup_and_copy(spec: ComponentSpec, settings: Settings) -> dict[str, t.Any]:
    """A backup, then the off-host copy of it (and of every backup still queued). The backup commits first: a
    copy that fails raises exit code 13 naming the target and cause, and says the backup is committed."""
    result = run_backup(spec, settings).to_dict()
    try:
        result["offsite"] = run_offsite(spec, settings)
    except BackupError as exc:
        exc.message = "backup %s of %s is committed locally; %s; the next run copies it" % (
            result["id"],
            spec.name,
            exc.message,
        )
        exc.evidence["backup"] = {k: result[k] for k in ("id", "path", "size", "duration_s")}
        raise
    return result


def run_check(spec: ComponentSpec, settings: Settings) -> dict[str, t.Any]:
    """``borg check`` of the repository (the whole repository, or a part per run with check_max_duration; the
    archives' data too with check_verify_data). The result is a metric either way."""
    cfg = Offsite.from_settings(settings)
    borg = Borg(cfg)
    store = Store(settings.dest, spec.name)
    state = load_state(store)
    started = time.monotonic()
    args = ["check"]
    if cfg.check_verify_data:
        args += ["--verify-data", "--glob-archives", "%s-*" % spec.name]
    elif cfg.check_max_duration > 0:
        args += ["--repository-only", "--max-duration", str(cfg.check_max_duration)]
    try:
        # borg check exits 1 (a "warning") when it found the repository damaged: strict fails on it.
        borg.run(args + [borg.location()], strict=True)
        state["offsite_check_ok"] = 1
        # The repository's listing is the truth: a copy verified once and gone since (a rollback, a deletion) is
        # pending again, and the next backup run copies it.
        remote = borg.archives(spec.name)
        kept = [i for i in state.get("offsite_verified") or [] if archive_name(spec.name, i) in remote]
        lost = sorted(set(state.get("offsite_verified") or []) - set(kept))
        state["offsite_verified"] = kept
        state["offsite_pending"] = len(offsite_pending(store, state))
    except OffsiteError as exc:
        state["offsite_check_ok"] = 0
        raise _failed(cfg, "the check of the repository", exc) from exc
    finally:
        state["offsite_check_last"] = round(time.time(), 3)
        state["offsite_check_duration"] = round(time.monotonic() - started, 3)
        _record(settings, spec, store, state)
    return {
        "component": spec.name,
        "target": cfg.target,
        "check_ok": True,
        "duration_s": state["offsite_check_duration"],
        "gone_from_repository": lost,
        "pending": state["offsite_pending"],
    }


@dataclass
class RemoteArchive:
    id: str
    created: float
    name: str


def by_component(names: t.Iterable[str]) -> dict[str, list[RemoteArchive]]:
    """The collection's archives (<component>-<backup id>, not borg's .checkpoint ones) per component, oldest
    first; other names are left out."""
    found: dict[str, list[RemoteArchive]] = {}
    for name in sorted(names):
        match = ID_RE.match(name)
        if not match or name.endswith(".checkpoint"):
            continue
        created = float(calendar.timegm(time.strptime(match.group("id"), "%Y%m%dT%H%M%SZ")))
        found.setdefault(match.group("component"), []).append(RemoteArchive(match.group("id"), created, name))
    return found


def _choose(borg: Borg, cfg: Offsite, component: str, backup_id: str | None) -> str:
    try:
        listed = borg.archives(component)
    except OffsiteError as exc:
        raise _failed(cfg, "listing the off-host archives of %s" % component, exc) from exc
    ids = [a.id for a in by_component(listed).get(component, [])]
    if not ids:
        raise BackupError(EXIT_VERIFY, "no off-host copy of %s in %s; nothing was touched" % (component, cfg.target))
    if not backup_id or backup_id == "latest":
        return ids[-1]
    if backup_id not in ids:
        raise BackupError(
            EXIT_VERIFY,
            "backup %s of %s is not in %s (it has: %s); nothing was touched"
            % (backup_id, component, cfg.target, ", ".join(ids[-5:])),
        )
    return backup_id


def _extract(borg: Borg, cfg: Offsite, component: str, backup_id: str, into: str) -> Manifest:
    """Extract archive <component>-<id> under into/ (giving into/<id>/) and verify every artifact against the
    manifest that came with it; raises before anything else is touched."""
    name = archive_name(component, backup_id)
    try:
        borg.run(["extract", borg.location(name)], cwd=into)
    except OffsiteError as exc:
        raise _failed(cfg, "fetching %s %s from the off-host copy" % (component, backup_id), exc) from exc
    directory = os.path.join(into, backup_id)
    try:
        with open(os.path.join(directory, MANIFEST), encoding="utf-8") as handle:
            manifest = Manifest.from_dict(json.load(handle))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(
            EXIT_VERIFY,
            "the off-host copy %s in %s has no readable manifest (%s); nothing was touched" % (name, cfg.target, exc),
        ) from exc
    problems = Store(into, "").verify(manifest, directory)
    if problems or manifest.id != backup_id or manifest.component != component:
        raise BackupError(
            EXIT_VERIFY,
            "the off-host copy %s in %s fails verification, refusing to use it: %s; nothing was touched"
            % (name, cfg.target, "; ".join(problems) or "its manifest names %s %s" % (manifest.component, manifest.id)),
            {"problems": problems},
        )
    return manifest


def fetch(spec: ComponentSpec, settings: Settings, backup_id: str | None = None) -> dict[str, t.Any]:
    """Bring a backup from the off-host copy into the local store (a fresh host has none), verified against its
    manifest before it is committed there; a backup the store already holds and that verifies is left as it is."""
    cfg = Offsite.from_settings(settings)
    borg = Borg(cfg)
    store = Store(settings.dest, spec.name)
    os.makedirs(store.root, mode=0o700, exist_ok=True)
    with job_lock(os.path.join(store.root, LOCK), "opsbook-backup fetch"):
        chosen = _choose(borg, cfg, spec.name, backup_id)
        local = {m.id: m for m in store.manifests()}
        if chosen in local and not store.verify(local[chosen]):
            return {"component": spec.name, "backup_id": chosen, "fetched": False, "target": cfg.target}
        started = time.monotonic()
        scratch = tempfile.mkdtemp(prefix=".fetch-", dir=store.root)
        try:
            manifest = _extract(borg, cfg, spec.name, chosen, scratch)
            if os.path.isdir(store.path(chosen)):  # a local copy that fails verification: set aside, not deleted
                os.rename(store.path(chosen), store.path(chosen) + ".damaged-%d" % int(time.time()))
            os.rename(os.path.join(scratch, chosen), store.partial_path(chosen))
            store.commit(chosen)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        state = load_state(store)
        state["offsite_verified"] = sorted(set(state.get("offsite_verified") or []) | {chosen})
        _record(settings, spec, store, state)
        return {
            "component": spec.name,
            "backup_id": chosen,
            "fetched": True,
            "bytes": manifest.size,
            "target": cfg.target,
            "duration_s": round(time.monotonic() - started, 3),
        }


def plan_fetch(spec: ComponentSpec, settings: Settings, backup_id: str | None = None) -> dict[str, t.Any]:
    """What fetch would bring (check mode): the chosen archive, and whether the store has it already."""
    cfg = Offsite.from_settings(settings)
    chosen = _choose(Borg(cfg), cfg, spec.name, backup_id)
    store = Store(settings.dest, spec.name)
    local = {m.id: m for m in store.manifests()}
    return {
        "component": spec.name,
        "backup_id": chosen,
        "target": cfg.target,
        "fetched": not (chosen in local and not store.verify(local[chosen])),
    }


def run_offsite_drill(spec: ComponentSpec, settings: Settings, backup_id: str | None = None) -> dict[str, t.Any]:
    """The restore drill from the off-host copy: extract the archive into a scratch directory (not the local
    store), verify it against its manifest, and let the engine restore it into a throwaway container."""
    cfg = Offsite.from_settings(settings)
    borg = Borg(cfg)
    store = Store(settings.dest, spec.name)
    os.makedirs(store.root, mode=0o700, exist_ok=True)
    engine = engine_for(spec, settings)
    if not engine.drillable:
        raise BackupError(
            EXIT_USAGE, "restore drills do not exist for a %s backup; it is checked by verify" % spec.type
        )
    with job_lock(os.path.join(store.root, LOCK), "opsbook-backup drill --source offsite"):
        state = load_state(store)
        started = time.monotonic()
        result: dict[str, t.Any] = {"component": spec.name, "source": "offsite", "target": cfg.target}
        scratch = tempfile.mkdtemp(prefix=".drill-", dir=store.root)
        try:
            chosen = _choose(borg, cfg, spec.name, backup_id)
            result["backup_id"] = chosen
            manifest = _extract(borg, cfg, spec.name, chosen, scratch)
            result["fetch_s"] = round(time.monotonic() - started, 3)
            require_decryptable(settings, manifest)
            result.update(engine.drill(os.path.join(scratch, chosen), manifest))
            state["offsite_drill_ok"] = 1
        except BackupError:
            state["offsite_drill_ok"] = 0
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            state["offsite_drill_duration"] = result["duration_s"] = round(time.monotonic() - started, 3)
            state["offsite_drill_last"] = round(time.time(), 3)
            _record(settings, spec, store, state)
        return result


def _newest_verified(borg: Borg, archives: list[RemoteArchive]) -> str | None:
    """The newest archive whose files match the manifest it carries (checked from the repository's data)."""
    for arc in sorted(archives, key=lambda a: (a.created, a.id), reverse=True):
        try:
            raw = borg.run(["extract", "--stdout", borg.location(arc.name), "%s/%s" % (arc.id, MANIFEST)]).stdout
            manifest = Manifest.from_dict(json.loads(raw.decode("utf-8")))
            if not remote_problems(borg, arc.name, manifest, hashlib.sha256(raw).hexdigest()):
                return arc.id
        except (OffsiteError, ValueError, KeyError, TypeError):
            continue
    return None


def prune_remote(settings: Settings) -> dict[str, t.Any]:
    """Retention of the repository, run on its own (trusted) host with direct access: per component keep
    keep_last, the newest per day/ISO week/month for keep_daily/keep_weekly/keep_monthly, and always the newest
    archive that verifies; delete the rest and compact.

    Refuses, deleting and compacting nothing, when an archive recorded in history_file at the last run is gone
    and this host did not delete it: a client deleted it in append-only mode, its data is still in the segments,
    and a compact would make the deletion permanent (docs/offsite-backups.md: how to roll the repository back)."""
    cfg = Offsite.from_settings(settings)
    if not cfg.history_file:
        raise BackupError(EXIT_USAGE, "offsite: prune needs history_file (the record of the archives seen)")
    borg = Borg(cfg)
    history = _files.read_json_object(cfg.history_file)
    try:
        listed = borg.archives()
        names = sorted(n for n in listed if not n.endswith(".checkpoint"))
    except OffsiteError as exc:
        raise _failed(cfg, "listing the archives", exc) from exc
    known = set(history.get("archives") or [])
    missing = sorted(known - set(names))
    if missing:
        raise BackupError(
            EXIT_OFFSITE,
            "%d archive(s) of %s are gone although this host did not prune them: %s. A client deleted them "
            "(append-only mode keeps their data until a compact); nothing was pruned or compacted. Roll the "
            "repository back as docs/offsite-backups.md says, then run the prune again."
            % (len(missing), cfg.target, ", ".join(missing)),
            {"missing": missing, "target": cfg.target, "cause": "archives deleted by a client"},
        )
    deleted: list[str] = []
    kept: dict[str, str | None] = {}
    try:
        for component, archives in sorted(by_component(names).items()):
            newest = _newest_verified(borg, archives)
            kept[component] = newest
            keep = select_keep(archives, cfg.keep_last, cfg.keep_daily, cfg.keep_weekly, newest, cfg.keep_monthly)
            doomed = [a.name for a in archives if a.id not in keep]
            if doomed:
                borg.run(["delete", borg.location()] + doomed)
                deleted += doomed
        if deleted:
            borg.run(["compact", borg.location()])
    except OffsiteError as exc:
        raise _failed(cfg, "pruning", exc) from exc
    finally:
        remaining = sorted(set(listed) - set(deleted))
        write_json_atomic(
            cfg.history_file, {"archives": remaining, "updated": round(time.time(), 3), "deleted": deleted}
        )
    return {"target": cfg.target, "deleted": deleted, "newest_verified": kept, "archives": len(names) - len(deleted)}


__all__ = [
    "Borg",
    "Offsite",
    "OffsiteError",
    "archive_name",
    "backup_and_copy",
    "by_component",
    "classify",
    "fetch",
    "plan_fetch",
    "prune_remote",
    "remote_problems",
    "run_check",
    "run_offsite",
    "run_offsite_drill",
]
