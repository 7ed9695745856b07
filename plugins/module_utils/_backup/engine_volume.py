# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""A named Docker volume: a tar through the archive API of a never-started helper container that mounts it.

Private to this collection: not a public API, it may change in any release.

The containers using the volume can be stopped meanwhile (stop_owners, or their label opsbook.backup.stop=true),
so that for example Grafana's SQLite file is consistent; a restore stops every running user of the volume.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._backup.base import Engine
from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import (
    EXIT_DOCKER,
    EXIT_RESTORE,
    EXIT_USAGE,
    BackupError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.pipeline import decompressed_chunks
from ansible_collections.opsbook.stack.plugins.module_utils._backup.store import Artifact, Manifest
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerNotFound

MOUNT = "/opsbook-volume"
STOP_LABEL = "opsbook.backup.stop"


class VolumeEngine(Engine):
    min_bytes = 1024
    requires = "volume"

    @classmethod
    def validate(cls, spec: t.Any) -> None:
        if not spec.volume:
            raise BackupError(EXIT_USAGE, "component %s: type volume needs volume: <docker volume name>" % spec.name)

    def owners(self) -> list[dict[str, t.Any]]:
        return self.client.list_containers(all=True, filters={"volume": [self.spec.volume]})

    def helper(self, read_only: bool) -> str:
        """A created, never started container with the volume at /opsbook-volume (the archive API needs one)."""
        try:
            self.client.inspect_volume(self.spec.volume)
        except DockerNotFound as exc:
            raise BackupError(EXIT_DOCKER, "volume %s does not exist" % self.spec.volume) from exc
        image = self.spec.helper_image
        if not image:
            owners = self.owners()
            if not owners:
                raise BackupError(EXIT_USAGE, "volume %s: no container uses it, set helper_image" % self.spec.volume)
            image = owners[0]["ImageID"]
        body = {
            "Image": image,
            "Cmd": ["true"],
            "Entrypoint": [],
            "Labels": {"opsbook.backup.helper": self.spec.name},
            "HostConfig": {
                "Binds": ["%s:%s%s" % (self.spec.volume, MOUNT, ":ro" if read_only else "")],
                "NetworkMode": "none",
            },
        }
        return self.client.create_container(body)

    def stoppable_owners(self) -> list[str]:
        ids = []
        for owner in self.owners():
            if owner.get("State") != "running":
                continue
            wanted = self.spec.stop_owners
            if wanted is None:
                wanted = (owner.get("Labels") or {}).get(STOP_LABEL, "").lower() in ("1", "true", "yes")
            if wanted:
                ids.append(owner["Id"])
        return ids

    def dump(self, directory: str) -> tuple[list[Artifact], dict[str, t.Any]]:
        helper = self.helper(read_only=True)
        stopped = self.stoppable_owners()
        facts: dict[str, t.Any] = {"volume": self.spec.volume, "stopped": stopped}
        try:
            for cid in stopped:
                self.client.stop_container(cid)
            art = self.dump_archive(directory, "volume.tar.zst", helper, MOUNT, "volume " + self.spec.volume)
            return [art], facts
        finally:
            for cid in stopped:
                self.client.start_container(cid)
            self.client.remove_container(helper, force=True)

    def restore(self, directory: str, manifest: Manifest, databases: list[str] | None = None) -> list[str]:
        art = manifest.artifacts[0]
        helper = self.helper(read_only=False)
        stopped = [o["Id"] for o in self.owners() if o.get("State") == "running"]
        path = os.path.join(directory, art.name)
        try:
            for cid in stopped:
                self.client.stop_container(cid)
            # The archive's top directory is opsbook-volume/: extracted at / of the helper, it lands in the volume.
            failure = BackupError(EXIT_RESTORE, "zstd -d %s failed" % path)
            self.put_archive(
                helper, "/", decompressed_chunks(path, self.settings, art.encrypted, failure), art.raw_bytes
            )
        finally:
            for cid in stopped:
                self.client.start_container(cid)
            self.client.remove_container(helper, force=True)
        return [art.name]

    def restore_steps(self, manifest: Manifest) -> list[str]:
        return [
            "stop the containers using volume %s, extract %s over it, start them" % (self.spec.volume, a.name)
            for a in manifest.artifacts
        ]
