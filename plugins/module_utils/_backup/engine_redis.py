# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Redis: BGSAVE, then the RDB file it wrote; restored by stopping Redis and putting the file in place.

Private to this collection: not a public API, it may change in any release.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import tarfile
import time
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._backup.base import Engine, container_env, first_set
from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import (
    EXIT_DRILL,
    EXIT_DUMP,
    EXIT_RESTORE,
    BackupError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.pipeline import decompressor
from ansible_collections.opsbook.stack.plugins.module_utils._backup.store import Artifact, Manifest
from ansible_collections.opsbook.stack.plugins.module_utils._backup.swap import run_helper

# The restored RDB's name beside the live one until the swap.
STAGED = ".opsbook-restore"


def unquote(value: str) -> str:
    """redis-cli --no-raw output without its decoration: '(integer) 5' -> '5', '"x"' -> 'x'."""
    value = value.strip()
    if value.startswith("(integer) "):
        return value[10:]
    return value.strip('"')


class RedisEngine(Engine):
    min_bytes = 18
    drillable = True

    def credentials(
        self, container: str | None = None, info: dict[str, t.Any] | None = None
    ) -> tuple[str, dict[str, str]]:
        env = container_env(info or self.container_info(container))
        password = self.spec.password or first_set(env, "REDIS_PASSWORD", "REDISCLI_AUTH")
        return "", ({"REDISCLI_AUTH": password} if password else {})

    def cli(self, container: str, env: dict[str, str], *args: str, code: int = EXIT_DUMP) -> str:
        return self.check(
            self.run(container, ["redis-cli", "--no-raw"] + list(args), env=env),
            "redis-cli %s" % " ".join(args),
            code,
            container,
        ).strip()

    def config(self, container: str, env: dict[str, str], key: str, code: int = EXIT_DUMP) -> str:
        lines = self.cli(container, env, "CONFIG", "GET", key, code=code).splitlines()
        return unquote(lines[1].split(")", 1)[-1]) if len(lines) > 1 else ""

    def info(self, container: str, env: dict[str, str], section: str, code: int = EXIT_DUMP) -> dict[str, str]:
        out = self.check(self.run(container, ["redis-cli", "INFO", section], env=env), "INFO", code, container)
        return dict(line.strip().split(":", 1) for line in out.splitlines() if ":" in line)

    def _bgsave(self, c: str, env: dict[str, str]) -> str:
        """BGSAVE and wait until it finished well; returns LASTSAVE."""
        before = unquote(self.cli(c, env, "LASTSAVE"))
        saves_before = self.info(c, env, "persistence").get("rdb_saves")  # Redis >= 7.0
        if saves_before is None:
            # LASTSAVE has one-second resolution: a save finishing within the second of the previous one would
            # look like no save at all.
            while str(int(time.time())) == before:
                time.sleep(0.05)
        started = time.monotonic()
        out = self.cli(c, env, "BGSAVE")
        if "ERR" in out and "in progress" not in out:
            raise BackupError(EXIT_DUMP, "BGSAVE refused in %s: %s" % (c, out))
        while True:
            info = self.info(c, env, "persistence")
            now = unquote(self.cli(c, env, "LASTSAVE"))
            saved = (info.get("rdb_saves") != saves_before) if saves_before is not None else now != before
            if saved and info.get("rdb_bgsave_in_progress") == "0":
                if info.get("rdb_last_bgsave_status") != "ok":
                    raise BackupError(
                        EXIT_DUMP,
                        "BGSAVE in %s failed (rdb_last_bgsave_status:%s): see the Redis log"
                        % (c, info.get("rdb_last_bgsave_status")),
                    )
                return now
            if time.monotonic() - started > self.settings.timeout:
                raise BackupError(EXIT_DUMP, "BGSAVE in %s did not finish within %g s" % (c, self.settings.timeout))
            time.sleep(0.1)

    def dump(self, directory: str) -> tuple[list[Artifact], dict[str, t.Any]]:
        info = self.container_info()
        facts = self.image_facts(info)
        _user, env = self.credentials(info=info)
        c = self.spec.container
        facts["lastsave"] = int(self._bgsave(c, env))
        facts["dbsize"] = int(unquote(self.cli(c, env, "DBSIZE")))
        rdir = self.config(c, env, "dir")
        rfile = self.config(c, env, "dbfilename")
        facts["rdb_path"] = "%s/%s" % (rdir.rstrip("/"), rfile)
        # The file is replaced by rename on every save: cat keeps the inode it opened, so the copy is consistent.
        return [self.dump_exec(directory, Artifact("dump.rdb.zst", "rdb"), c, ["cat", facts["rdb_path"]], {})], facts

    def rdb_tar(
        self, directory: str, art: Artifact, filename: str, uid: int, gid: int
    ) -> tuple[t.Iterator[bytes], int]:
        """A tar stream holding the decompressed RDB file as filename, and its exact length."""
        info = tarfile.TarInfo(filename)
        info.size = art.raw_bytes
        info.uid, info.gid, info.mode, info.mtime = uid, gid, 0o644, int(time.time())
        header = info.tobuf(format=tarfile.USTAR_FORMAT)
        padding = (512 - art.raw_bytes % 512) % 512
        length = len(header) + art.raw_bytes + padding + 1024
        path = os.path.join(directory, art.name)

        def chunks() -> t.Iterator[bytes]:
            yield header
            proc, source = decompressor(path, self.settings, art.encrypted)
            sent = 0
            for block in iter(source, b""):
                sent += len(block)
                yield block
            if proc.wait() != 0 or sent != art.raw_bytes:
                raise BackupError(
                    EXIT_RESTORE, "decompressing %s gave %d bytes, manifest says %d" % (path, sent, art.raw_bytes)
                )
            yield b"\0" * (padding + 1024)

        return chunks(), length

    def restore(self, directory: str, manifest: Manifest, databases: list[str] | None = None) -> list[str]:
        info = self.container_info(running=False)
        if not (info.get("State") or {}).get("Running"):
            # A restore killed while Redis was stopped: its RDB is the old or the new one whole (the swap is a
            # rename), so starting it serves one of them; the restore then runs from the start.
            self.client.start_container(info["Id"])
            self.wait_ready(self.spec.container, 60, EXIT_RESTORE)
        art = manifest.artifacts[0]
        self.restore_rdb(directory, art, self.spec.container)
        return [art.name]

    def restore_rdb(
        self, directory: str, art: Artifact, container: str, stop_start: bool = True, code: int = EXIT_RESTORE
    ) -> None:
        """stop_start (a live restore): the RDB goes beside the live one while Redis serves, then Redis stops, a
        helper renames it over the live file (on the volume of the data directory), Redis starts. Without a
        volume there, or in a drill (a container never started), the file is copied in place while stopped."""
        _user, env = self.credentials(container)
        if self.config(container, env, "appendonly", code) == "yes":
            raise BackupError(
                code,
                "Redis in %s has appendonly yes: it would load its AOF, not the restored RDB. "
                "Restore by hand: stop, remove the appendonly dir/file, copy the RDB, start, "
                "CONFIG SET appendonly yes." % container,
            )
        rdir = self.config(container, env, "dir", code)
        rfile = self.config(container, env, "dbfilename", code)
        owner = self.check(self.run(container, ["stat", "-c", "%u %g", rdir]), "stat", code, container).split()
        uid, gid = int(owner[0]), int(owner[1])
        info = self.container_info(container)
        on_volume = stop_start and any(m.get("Destination") == rdir.rstrip("/") for m in info.get("Mounts") or [])
        if on_volume:
            self.progress("copying")
            chunks, length = self.rdb_tar(directory, art, rfile + STAGED, uid, gid)
            self.put_archive(container, rdir, chunks, length)
            self.progress("swapping")
            # Stopped first: a running Redis would overwrite the file on shutdown (SAVE) or the next BGSAVE.
            self.client.stop_container(container, grace_s=30)
            try:
                body = {
                    "Image": info.get("Image"),
                    "Entrypoint": ["sh", "-c", 'mv -f "$1/$2" "$1/$3"', "opsbook-swap", rdir, rfile + STAGED, rfile],
                    "Cmd": [],
                    "User": "0",
                    "Labels": {"opsbook.backup.helper": self.spec.name},
                    "HostConfig": {"VolumesFrom": [info["Id"]], "NetworkMode": "none"},
                }
                run_helper(self.client, self.client.create_container(body), "rename the RDB", 120, code)
                self.progress("swapping", done=art.name)
            finally:
                self.progress("starting")
                self.client.start_container(container)  # the old data when the rename failed, better than none
        else:
            chunks, length = self.rdb_tar(directory, art, rfile, uid, gid)
            if stop_start:
                self.progress("swapping")
                self.client.stop_container(container, grace_s=30)
            try:
                self.put_archive(container, rdir, chunks, length)
            finally:
                if stop_start:
                    self.progress("starting")
                    self.client.start_container(container)
        self.wait_ready(container, 60, code)

    def restore_steps(self, manifest: Manifest) -> list[str]:
        return [
            "copy the RDB from %s beside the live one in %s, stop it, rename it over the live file, start it"
            % (a.name, self.spec.container)
            for a in manifest.artifacts
        ]

    def ready_argv(self, container: str, user: str) -> list[str]:
        return ["redis-cli", "PING"]

    def drill_checks(self, cid: str, directory: str, manifest: Manifest) -> dict[str, t.Any]:
        name = self.spec.container
        # Copied in before the first start, so the server loads it like after a reboot.
        rdir, rfile = os.path.split(manifest.facts.get("rdb_path", "/data/dump.rdb"))
        chunks, length = self.rdb_tar(directory, manifest.artifacts[0], rfile, 0, 0)
        self.put_archive(cid, rdir, chunks, length)
        self.client.start_container(cid)
        self.wait_ready(name, self.settings.drill_timeout, EXIT_DRILL)
        _u, env = self.credentials(name)
        size = int(unquote(self.cli(name, env, "DBSIZE", code=EXIT_DRILL)))
        expected = manifest.facts.get("dbsize")
        if expected and not size:
            raise BackupError(
                EXIT_DRILL, "drill of %s: the restored Redis is empty, the source had %s keys" % (manifest.id, expected)
            )
        return {"dbsize": size, "expected_dbsize": expected, "matches_source": size == expected}
