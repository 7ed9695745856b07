# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""A named Docker volume: a tar through the archive API of a never-started helper container that mounts it.

Private to this collection: not a public API, it may change in any release.

The containers using the volume can be stopped meanwhile (stop_owners, or their label opsbook.backup.stop=true),
so that for example Grafana's SQLite file is consistent. A restore extracts the archive beside the live content
(swap.py) while its users still run, then stops every running user, swaps the content (files created after the
backup do not survive) and starts them again.
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
from ansible_collections.opsbook.stack.plugins.module_utils._backup.swap import DirectorySwap
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerNotFound

MOUNT = "/opsbook-volume"
STOP_LABEL = "opsbook.backup.stop"


def stop_wanted(owner: dict[str, t.Any], stop_owners: bool | None) -> bool:
    """Whether a backup stops this container (a Docker list entry) using the data: stop_owners when set, else
    its label opsbook.backup.stop=true."""
    if stop_owners is not None:
        return stop_owners
    return (owner.get("Labels") or {}).get(STOP_LABEL, "").lower() in ("1", "true", "yes")


class VolumeEngine(Engine):
    min_bytes = 1024
    requires = "volume"

    @classmethod
    def validate(cls, spec: t.Any) -> None:
        if not spec.volume:
            raise BackupError(EXIT_USAGE, "component %s: type volume needs volume: <docker volume name>" % spec.name)

    def owners(self) -> list[dict[str, t.Any]]:
        return self.client.list_containers(all=True, filters={"volume": [self.spec.volume]})

    def helper_image(self) -> str:
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
        return image

    def helper(self, read_only: bool) -> str:
        """A created, never started container with the volume at /opsbook-volume (the archive API needs one)."""
        body = {
            "Image": self.helper_image(),
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
            if stop_wanted(owner, self.spec.stop_owners):
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
        path = os.path.join(directory, art.name)
        swap = DirectorySwap(
            self.client,
            self.helper_image(),
            MOUNT,
            {"Binds": ["%s:%s" % (self.spec.volume, MOUNT)]},
            self.spec.name,
            self.settings.timeout,
        )
        self.progress("copying")
        swap.run("prepare")
        target = swap.helper()
        try:
            # The archive's top directory is opsbook-volume/: it lands in .opsbook-restore/opsbook-volume/.
            failure = BackupError(EXIT_RESTORE, "zstd -d %s failed" % path)
            self.put_archive(
                target, swap.staging, decompressed_chunks(path, self.settings, art.encrypted, failure), art.raw_bytes
            )
        except BaseException:
            swap.run("recover")  # the live content was not touched; drop the half extracted copy
            raise
        finally:
            swap.remove(target)
        stopped = [o["Id"] for o in self.owners() if o.get("State") == "running"]
        self.progress("swapping")
        try:
            for cid in stopped:
                self.client.stop_container(cid)
            swap.run("swap", os.path.basename(MOUNT))
            self.progress("swapping", done=art.name)
        finally:
            self.progress("starting")
            for cid in stopped:
                self.client.start_container(cid)
        return [art.name]

    def restore_steps(self, manifest: Manifest) -> list[str]:
        return [
            "extract %s beside the content of volume %s, stop the containers using it, swap the content "
            "(files created since the backup go), start them" % (a.name, self.spec.volume)
            for a in manifest.artifacts
        ]
