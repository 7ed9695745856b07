# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Prometheus: a TSDB snapshot through the admin API, archived out of the container and then removed.

Private to this collection: not a public API, it may change in any release.

The snapshot call is a standard-library HTTP client on purpose: the backup program runs on hosts without
Ansible (the modules' HTTP options live in _prometheus.py, which needs ansible-core).
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import http.client
import json
import os
import time
import typing as t
from urllib.parse import urlsplit

from ansible_collections.opsbook.stack.plugins.module_utils._backup.base import Engine
from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import (
    EXIT_DOCKER,
    EXIT_DUMP,
    EXIT_RESTORE,
    BackupError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.pipeline import decompressed_chunks
from ansible_collections.opsbook.stack.plugins.module_utils._backup.store import Artifact, Manifest
from ansible_collections.opsbook.stack.plugins.module_utils._backup.swap import DirectorySwap


def tsdb_path(info: dict[str, t.Any]) -> str:
    """--storage.tsdb.path of the running server (its default, data/, is relative to the working directory)."""
    args = [str(info.get("Path") or "")] + [str(a) for a in info.get("Args") or []]
    path = "data/"
    for i, arg in enumerate(args):
        if arg.startswith("--storage.tsdb.path="):
            path = arg.split("=", 1)[1]
        elif arg == "--storage.tsdb.path" and i + 1 < len(args):
            path = args[i + 1]
    workdir = (info.get("Config") or {}).get("WorkingDir") or "/"
    return os.path.normpath(os.path.join(workdir, path))


def api_call(url: str, method: str = "POST", code: int = EXIT_DUMP, timeout: float = 600.0) -> dict[str, t.Any]:
    """One request to Prometheus's HTTP API; a refused admin API says how to enable it."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        conn.request(
            method, parts.path + ("?" + parts.query if parts.query else ""), body=b"" if method == "POST" else None
        )
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise BackupError(code, "Prometheus API %s: %s" % (url, exc)) from exc
    finally:
        conn.close()
    if resp.status >= 400:
        text = body[:500].decode(errors="replace").strip()
        hint = ""
        if resp.status in (404, 405) or "admin APIs disabled" in text:
            hint = "; start Prometheus with --web.enable-admin-api"
        raise BackupError(code, "Prometheus API %s answered HTTP %s: %s%s" % (url, resp.status, text, hint))
    try:
        return json.loads(body) if body.strip().startswith(b"{") else {"status": "ok"}
    except ValueError as exc:
        raise BackupError(code, "Prometheus API %s: not JSON: %r" % (url, body[:200])) from exc


class PrometheusEngine(Engine):
    min_bytes = 1024

    def prometheus_url(self, info: dict[str, t.Any]) -> str:
        for net in ((info.get("NetworkSettings") or {}).get("Networks") or {}).values():
            if net.get("IPAddress"):
                return "http://%s:%d" % (net["IPAddress"], self.spec.api_port)
        if (info.get("HostConfig") or {}).get("NetworkMode") == "host":
            return "http://127.0.0.1:%d" % self.spec.api_port
        raise BackupError(
            EXIT_DOCKER,
            "container %s has no IP address on which this host could reach Prometheus's API" % self.spec.container,
        )

    tsdb_path = staticmethod(tsdb_path)

    def _api(self, url: str, method: str = "POST", code: int = EXIT_DUMP) -> dict[str, t.Any]:
        return api_call(url, method, code, timeout=min(self.settings.timeout, 600))

    def dump(self, directory: str) -> tuple[list[Artifact], dict[str, t.Any]]:
        info = self.container_info()
        tsdb = tsdb_path(info)
        facts = dict(self.image_facts(info), tsdb_path=tsdb)
        answer = self._api(self.prometheus_url(info) + "/api/v1/admin/tsdb/snapshot")
        snapshot = (answer.get("data") or {}).get("name")
        if answer.get("status") != "success" or not snapshot:
            raise BackupError(EXIT_DUMP, "Prometheus in %s did not make a snapshot: %s" % (self.spec.container, answer))
        facts["snapshot"] = snapshot
        snap_dir = "%s/snapshots/%s" % (tsdb.rstrip("/"), snapshot)
        try:
            art = self.dump_archive(directory, "tsdb.tar.zst", self.spec.container, snap_dir, "snapshot " + snap_dir)
        finally:
            # A snapshot is hard links into the TSDB: left behind, it would pin blocks retention wants to delete.
            if self.run(self.spec.container, ["rm", "-rf", snap_dir]).exit_code != 0:
                facts["snapshot_left_behind"] = snap_dir
        return [art], facts

    def restore(self, directory: str, manifest: Manifest, databases: list[str] | None = None) -> list[str]:
        """Stop Prometheus, replace the content of its TSDB volume with the snapshot, start it, wait until ready."""
        art = manifest.artifacts[0]
        self.restore_tsdb(directory, art, manifest.facts)
        return [art.name]

    def restore_tsdb(self, directory: str, art: Artifact, facts: dict[str, t.Any], code: int = EXIT_RESTORE) -> None:
        """Extract the snapshot beside the TSDB while Prometheus runs, stop it, swap the directory's content
        (swap.py), start it and wait until it is ready. A stopped Prometheus (a killed restore) is fine."""
        info = self.container_info(running=False)
        tsdb = facts.get("tsdb_path") or tsdb_path(info)
        snapshot = facts.get("snapshot") or ""
        on_volume = any(
            tsdb == m.get("Destination") or tsdb.startswith(str(m.get("Destination")).rstrip("/") + "/")
            for m in info.get("Mounts") or []
        )
        if not on_volume or not snapshot:
            raise BackupError(
                code,
                "Prometheus's TSDB %s in %s is not on a volume (or the manifest names no snapshot): "
                "restore by hand: stop it, extract the archive, move the snapshot's blocks into "
                "the TSDB directory, start it" % (tsdb, self.spec.container),
            )
        swap = DirectorySwap(
            self.client,
            info.get("Image") or "",
            tsdb,
            {"VolumesFrom": [info["Id"]]},
            self.spec.name,
            self.settings.timeout,
            code,
        )
        self.progress("copying")
        swap.run("prepare")
        target = swap.helper()
        path = os.path.join(directory, art.name)
        try:
            failure = BackupError(code, "decompressing %s failed" % path)
            self.put_archive(
                target, swap.staging, decompressed_chunks(path, self.settings, art.encrypted, failure), art.raw_bytes
            )
        except BaseException:
            swap.run("recover")
            raise
        finally:
            swap.remove(target)
        self.progress("swapping")
        try:
            self.client.stop_container(info["Id"], grace_s=60)
            swap.run("swap", snapshot)
            self.progress("swapping", done=art.name)
        finally:
            self.progress("starting")
            self.client.start_container(info["Id"])
        ready = self.prometheus_url(self.container_info()) + "/-/ready"
        deadline = time.monotonic() + 120
        while True:
            try:
                self._api(ready, method="GET", code=code)
                return
            except BackupError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def restore_steps(self, manifest: Manifest) -> list[str]:
        return [
            "extract snapshot %s from %s beside the TSDB of %s, stop it, swap the TSDB's content, start it"
            % (manifest.facts.get("snapshot"), a.name, self.spec.container)
            for a in manifest.artifacts
        ]
