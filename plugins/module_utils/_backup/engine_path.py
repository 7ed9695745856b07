# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""A directory of the host (a bind mount, such as Grafana's data under the monitoring role's data directory): a tar
written by this program on the host, no helper container.

Private to this collection: not a public API, it may change in any release.

The containers that bind-mount the directory (or a directory inside it) can be stopped meanwhile (stop_owners, or
their label opsbook.backup.stop=true), as for a volume. Every entry's type, mode, size and content sha256 go into
the manifest (``tree_sha256``), so a drill extracts the archive into a scratch directory beside the backups and
compares. A restore extracts beside the live content (``<path>/.opsbook-restore/``), stops every running
container that mounts it, swaps the content with the script of swap.py (run by the host's ``sh``), gives the
directory itself its recorded mode and owner, and starts them again. Hard links are archived as separate files;
sockets are skipped (their names go into the manifest).
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._backup.base import Engine
from ansible_collections.opsbook.stack.plugins.module_utils._backup.engine_volume import stop_wanted
from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import (
    CHUNK,
    EXIT_DOCKER,
    EXIT_DRILL,
    EXIT_DUMP,
    EXIT_RESTORE,
    EXIT_USAGE,
    BackupError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.pipeline import decompressed_chunks
from ansible_collections.opsbook.stack.plugins.module_utils._backup.store import Artifact, Manifest
from ansible_collections.opsbook.stack.plugins.module_utils._backup.swap import MARKER, NEW, OLD, run_on_host
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerError

# The archive's top directory: its entries are the directory's content, its own mode and owner the directory's.
TOP = "content"
# A killed restore's leftovers at the top of the directory: never archived (the next restore cleans them up).
RESTORE_LEFTOVERS = (NEW, OLD, MARKER)
# Python 3.12+ (and 3.11.4+) extract with a filter; ours is checked member by member (safe_members), and the
# archive's exact modes are the point of a restore, so the permissive one.
EXTRACT_FILTER: dict[str, t.Any] = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}


def path_problem(name: str, path: t.Any) -> str:
    """Why path is not a directory a path job can name ("" when it can)."""
    where = "the job's path setting (backup_components.%s.path in the backup role)" % name
    if not path:
        return "type path needs path, the absolute host directory to back up: set %s" % where
    if not isinstance(path, str) or not os.path.isabs(path):
        return "path %r is relative: %s must be an absolute host directory, such as /var/lib/monitoring/grafana" % (
            path,
            where,
        )
    if os.path.normpath(path) != path.rstrip("/") or path.rstrip("/") == "":
        return "path %r: %s must be a normalised directory below / (no '..', '.' or '//')" % (path, where)
    return ""


def inside(source: str, root: str) -> bool:
    """Whether source is root or a path below it."""
    source, root = os.path.normpath(source), os.path.normpath(root)
    return source == root or source.startswith(root.rstrip("/") + "/")


class _Hashing:
    """A file read by tarfile, hashed on the way."""

    def __init__(self, handle: t.BinaryIO):
        self.handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data


class _Counting:
    """The write end tarfile streams into: the artifact writer's sink, counted."""

    def __init__(self, sink: t.Callable[[bytes], None]):
        self.sink = sink
        self.count = 0

    def write(self, data: bytes) -> int:
        self.sink(bytes(data))
        self.count += len(data)
        return len(data)


class _Chunks:
    """A readable file over an iterator of byte chunks (the decompressed artifact) for tarfile's stream mode."""

    def __init__(self, chunks: t.Iterator[bytes]):
        self.chunks = chunks
        self.buffer = b""
        self.done = False

    def read(self, size: int = -1) -> bytes:
        while not self.done and (size < 0 or len(self.buffer) < size):
            block = next(self.chunks, None)
            if block is None:
                self.done = True
            else:
                self.buffer += block
        if size < 0:
            size = len(self.buffer)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def drain(self) -> None:
        """Read to the end, so that the decompressor's exit status is checked (tarfile stops at its end marker)."""
        while self.read(CHUNK):
            pass


def _entry(rel: str, st: os.stat_result, sha256: str = "", link: str = "") -> dict[str, t.Any]:
    if stat.S_ISLNK(st.st_mode):
        return {"path": rel, "type": "symlink", "link": link}
    if stat.S_ISDIR(st.st_mode):
        return {"path": rel, "type": "dir", "mode": stat.S_IMODE(st.st_mode)}
    return {"path": rel, "type": "file", "mode": stat.S_IMODE(st.st_mode), "size": st.st_size, "sha256": sha256}


def tree_digest(entries: list[dict[str, t.Any]]) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest()


def _walk(root: str, top: bool = True) -> t.Iterator[tuple[str, os.DirEntry]]:
    """(path relative to root, entry) of everything below root, sorted, depth first, no symlink followed."""
    with os.scandir(root) as found:
        entries = sorted(found, key=lambda e: e.name)
    for entry in entries:
        if top and entry.name in RESTORE_LEFTOVERS:
            continue
        yield entry.name, entry
        if entry.is_dir(follow_symlinks=False):
            for rel, sub in _walk(entry.path, top=False):
                yield entry.name + "/" + rel, sub


def tree_of(root: str) -> list[dict[str, t.Any]]:
    """The entries of a directory as the manifest records them (what a drill compares)."""
    entries = []
    for rel, entry in _walk(root):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256()
            with open(entry.path, "rb") as handle:
                for block in iter(lambda: handle.read(CHUNK), b""):
                    digest.update(block)
            entries.append(_entry(rel, st, digest.hexdigest()))
        elif stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            entries.append(_entry(rel, st, link=os.readlink(entry.path) if stat.S_ISLNK(st.st_mode) else ""))
    return entries


def write_tar(root: str, sink: t.Callable[[bytes], None]) -> tuple[int, dict[str, t.Any]]:
    """The tar of root (its content under TOP/) into sink; returns the bytes written and the tree facts."""
    out = _Counting(sink)
    entries: list[dict[str, t.Any]] = []
    skipped: list[str] = []
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        tar.add(root, arcname=TOP, recursive=False)
        for rel, entry in _walk(root):
            try:
                info = tar.gettarinfo(entry.path, arcname=TOP + "/" + rel)
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                skipped.append(rel + " (gone while archived)")
                continue
            if info is None:  # a socket: tar has no type for it
                skipped.append(rel + " (socket)")
                continue
            if info.type == tarfile.LNKTYPE:  # a second name of a file archived already: archived in full again
                info.type, info.linkname, info.size = tarfile.REGTYPE, "", st.st_size
            if info.isreg():
                with open(entry.path, "rb") as handle:
                    hashing = _Hashing(handle)
                    tar.addfile(info, hashing)
                entries.append(_entry(rel, st, hashing.digest.hexdigest()))
            elif info.isdir() or info.issym():
                tar.addfile(info)
                entries.append(_entry(rel, st, link=info.linkname))
            else:  # fifos and device nodes: restored as they are, not compared
                tar.addfile(info)
    facts = {
        "files": sum(1 for e in entries if e["type"] == "file"),
        "directories": sum(1 for e in entries if e["type"] == "dir"),
        "symlinks": sum(1 for e in entries if e["type"] == "symlink"),
        "file_bytes": sum(e.get("size", 0) for e in entries),
        "tree_sha256": tree_digest(entries),
        "skipped": skipped,
    }
    return out.count, facts


def _bad_member(member: tarfile.TarInfo, target: str) -> str:
    """Why member must not be extracted into target ("" when it may)."""
    name = member.name
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or parts[0] != TOP:
        return "entry %r lies outside %s/" % (name, TOP)
    if member.islnk() and (member.linkname.startswith("/") or ".." in member.linkname.split("/")):
        return "hard link %r points outside the archive (%r)" % (name, member.linkname)
    if member.ischr() or member.isblk():
        return "entry %r is a device node" % name
    # An earlier symlink entry must not lead an entry out of the target.
    parent = os.path.realpath(os.path.join(target, os.path.dirname(name)))
    if not inside(parent, os.path.realpath(target)):
        return "entry %r leads through a symlink out of %s" % (name, target)
    return ""


def extract(path: str, settings: t.Any, encrypted: bool, target: str) -> tarfile.TarInfo:
    """Extract the artifact at path into target (target/TOP/...), with modes, times and, as root, owners;
    returns the archive's top entry (the directory's own mode and owner)."""
    failure = BackupError(EXIT_RESTORE, "zstd -d %s failed" % path)
    source = _Chunks(decompressed_chunks(path, settings, encrypted, failure))
    top: list[tarfile.TarInfo] = []

    def safe_members(tar: tarfile.TarFile) -> t.Iterator[tarfile.TarInfo]:
        for member in tar:
            why = _bad_member(member, target)
            if why:
                raise BackupError(EXIT_RESTORE, "archive %s: %s; nothing was swapped" % (path, why))
            if member.name == TOP:
                top.append(member)
            yield member

    try:
        with tarfile.open(fileobj=source, mode="r|") as tar:  # type: ignore[call-overload]
            tar.extractall(target, members=safe_members(tar), numeric_owner=True, **EXTRACT_FILTER)
        source.drain()
    except (tarfile.TarError, OSError) as exc:
        raise BackupError(EXIT_RESTORE, "extracting %s into %s failed: %s" % (path, target, exc)) from exc
    if not top:
        raise BackupError(EXIT_RESTORE, "archive %s has no %s/ entry: not a backup of type path" % (path, TOP))
    return top[0]


class PathEngine(Engine):
    """Backs up and restores one directory of the host."""

    min_bytes = 1024  # an empty directory's tar is 10240 bytes
    requires = "path"
    drillable = True

    @classmethod
    def validate(cls, spec: t.Any) -> None:
        why = path_problem(spec.name, spec.path)
        if why:
            raise BackupError(EXIT_USAGE, "component %s: %s" % (spec.name, why))

    @property
    def root(self) -> str:
        return self.spec.path.rstrip("/")

    def owners(self) -> list[dict[str, t.Any]]:
        """The containers that bind-mount the directory or a directory below it (not those mounting a parent,
        such as node-exporter's read-only view of /)."""
        try:
            containers = self.client.list_containers(all=True)
        except DockerError as exc:
            raise BackupError(
                EXIT_DOCKER,
                "cannot list the containers that bind-mount %s (component %s): %s" % (self.root, self.spec.name, exc),
            ) from exc
        return [
            c
            for c in containers
            if any(m.get("Type") == "bind" and inside(m.get("Source") or "", self.root) for m in c.get("Mounts") or [])
        ]

    def _running_owners(self, wanted: t.Callable[[dict[str, t.Any]], bool]) -> list[str]:
        return [o["Id"] for o in self.owners() if o.get("State") == "running" and wanted(o)]

    def _start(self, ids: list[str]) -> None:
        for cid in ids:
            self.client.start_container(cid)

    def _stop(self, ids: list[str]) -> None:
        for cid in ids:
            self.client.stop_container(cid)

    def dump(self, directory: str) -> tuple[list[Artifact], dict[str, t.Any]]:
        if not os.path.isdir(self.root):
            raise BackupError(
                EXIT_USAGE,
                "component %s: path %s is not a directory on this host (backup_components.%s.path)"
                % (self.spec.name, self.root, self.spec.name),
            )
        # stop_owners: false asks Docker nothing (a directory no container uses).
        stopped = (
            []
            if self.spec.stop_owners is False
            else self._running_owners(lambda o: stop_wanted(o, self.spec.stop_owners))
        )
        facts: dict[str, t.Any] = {"path": self.root, "stopped": stopped}
        try:
            self._stop(stopped)
            tree: dict[str, t.Any] = {}

            def produce(sink: t.Callable[[bytes], None]) -> int:
                try:
                    count, found = write_tar(self.root, sink)
                except OSError as exc:
                    raise BackupError(EXIT_DUMP, "archiving %s failed: %s" % (self.root, exc)) from exc
                tree.update(found)
                return count

            art = self.dump_tar(directory, "path.tar.zst", produce, "directory " + self.root)
            facts.update(tree)
            return [art], facts
        finally:
            self._start(stopped)

    def restore(self, directory: str, manifest: Manifest, databases: list[str] | None = None) -> list[str]:
        art = manifest.artifacts[0]
        timeout = self.settings.timeout
        # A new host: the directory does not exist yet (its mode and owner come from the archive below).
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        self.progress("copying")
        run_on_host(self.root, "prepare", timeout=timeout)
        try:
            top = extract(os.path.join(directory, art.name), self.settings, art.encrypted, os.path.join(self.root, NEW))
        except BaseException:
            run_on_host(self.root, "recover", timeout=timeout)  # the live content was not touched
            raise
        stopped = self._running_owners(lambda o: True)
        self.progress("swapping")
        try:
            self._stop(stopped)
            run_on_host(self.root, "swap", TOP, timeout=timeout)
            if os.geteuid() == 0:
                os.chown(self.root, top.uid, top.gid)
            os.chmod(self.root, top.mode)
            self.progress("swapping", done=art.name)
        finally:
            self.progress("starting")
            self._start(stopped)
        return [art.name]

    def restore_steps(self, manifest: Manifest) -> list[str]:
        return [
            "extract %s into %s/%s, stop the containers that bind-mount %s, swap the content (files created since "
            "the backup go), give it mode and owner of the backup, start them" % (a.name, self.root, NEW, self.root)
            for a in manifest.artifacts
        ]

    def drill(self, directory: str, manifest: Manifest) -> dict[str, t.Any]:
        """Extract the backup into a scratch directory beside the backups and compare every entry (type, mode,
        size, content) with what the backup recorded; the live directory is not touched."""
        art = manifest.artifacts[0]
        scratch = tempfile.mkdtemp(prefix=".drill-", dir=os.path.dirname(directory.rstrip("/")))
        try:
            extract(os.path.join(directory, art.name), self.settings, art.encrypted, scratch)
            entries = tree_of(os.path.join(scratch, TOP))
        finally:
            for base, dirs, _files in os.walk(scratch):  # read-only directories of the archive stay removable
                for name in dirs:
                    os.chmod(os.path.join(base, name), 0o700, follow_symlinks=False)
            shutil.rmtree(scratch, ignore_errors=True)
        expected = manifest.facts.get("tree_sha256")
        report = {
            "directory": scratch,
            "files": sum(1 for e in entries if e["type"] == "file"),
            "file_bytes": sum(e.get("size", 0) for e in entries),
            "matches_source": tree_digest(entries) == expected,
        }
        if not report["matches_source"]:
            raise BackupError(
                EXIT_DRILL,
                "drill of %s: the extracted tree (%d files, %d bytes) differs from the one backed up (%s files, %s "
                "bytes): type, mode, size or content of an entry changed"
                % (manifest.id, report["files"], report["file_bytes"], manifest.facts.get("files"),
                   manifest.facts.get("file_bytes")),
                report,
            )  # fmt: skip
        return report


__all__ = ["PathEngine", "extract", "path_problem", "tree_of", "write_tar"]
