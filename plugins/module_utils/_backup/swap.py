# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Replace the content of a directory on a Docker volume by a restored copy: extract beside, then swap.

Private to this collection: not a public API, it may change in any release.

A volume's root (a Prometheus TSDB, a Grafana volume) is a mount point and cannot be renamed, so its content is
swapped in three recorded steps by a helper container that mounts it (``sh``, ``find`` and ``mv`` of the image,
busybox is enough):

1. ``prepare``: the archive is extracted into ``<root>/.opsbook-restore/`` while the live data still serves;
2. ``swap`` (the users of the data stopped): every entry of the root moves into ``<root>/.opsbook-old/``, the
   marker ``.opsbook-old/.opsbook-complete`` is written, the restored entries move into the root, and both
   directories are removed;
3. a run killed in between is finished by ``recover`` (the first step of the next ``prepare``): with the marker,
   the old data was entirely aside and the restored copy complete, so the swap rolls forward; without it, the old
   entries move back (roll back). Files created after the backup do not survive a swap.

A directory of the host itself (type path) goes through the same script, run by the host's ``sh``
(``run_on_host``).

Renames on one filesystem: no step copies data, and the old data is removed only once the new data is in place.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import EXIT_RESTORE, BackupError
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient, DockerError
from ansible_collections.opsbook.stack.plugins.module_utils._process import run_command

NEW = ".opsbook-restore"
OLD = ".opsbook-old"
MARKER = ".opsbook-complete"

# $1 root, $2 mode (recover | prepare | swap), $3 the directory under .opsbook-restore/ that holds the new content.
SCRIPT = r"""
set -e
cd "$1"
NEW=%(new)s OLD=%(old)s MARKER=%(marker)s
move() {
  find "$1" -mindepth 1 -maxdepth 1 ! -name "$NEW" ! -name "$OLD" ! -name "$MARKER" \
    -exec sh -c 'mv -f "$@" "$0"/' "$2" {} +
}
recover() {
  if [ -d "$OLD" ]; then
    if [ -e "$OLD/$MARKER" ]; then
      for d in "$NEW"/*; do if [ -d "$d" ]; then move "$d" .; fi; done
    else
      move "$OLD" .
    fi
    rm -rf "$OLD"
  fi
  rm -rf "$NEW"
}
case "$2" in
  recover) recover ;;
  prepare) recover; mkdir "$NEW" ;;
  swap)
    if [ ! -d "$NEW/$3" ]; then echo "nothing to swap in: $NEW/$3 is missing" >&2; exit 3; fi
    mkdir "$OLD"
    move . "$OLD"
    touch "$OLD/$MARKER"
    move "$NEW/$3" .
    rm -rf "$OLD" "$NEW" ;;
  *) echo "unknown mode $2" >&2; exit 2 ;;
esac
""" % {"new": NEW, "old": OLD, "marker": MARKER}


class DirectorySwap:
    """The three steps on root, in helper containers of image with mounts (HostConfig Binds or VolumesFrom)."""

    def __init__(
        self,
        client: DockerClient,
        image: str,
        root: str,
        host_config: dict[str, t.Any],
        label: str,
        timeout: float = 3600.0,
        code: int = EXIT_RESTORE,
    ):
        self.client = client
        self.image = image
        self.root = root.rstrip("/") or "/"
        self.host_config = dict(host_config, NetworkMode="none")
        self.label = label
        self.timeout = timeout
        self.code = code

    @property
    def staging(self) -> str:
        """Where the archive is to be extracted (after prepare)."""
        return "%s/%s" % (self.root.rstrip("/"), NEW)

    def helper(self, mode: str = "recover", content: str = "") -> str:
        """A created (not started) helper that runs mode when started; also the target of put_archive."""
        body = {
            "Image": self.image,
            "Entrypoint": ["sh", "-c", SCRIPT, "opsbook-swap", self.root, mode, content],
            "Cmd": [],
            "User": "0",
            "Labels": {"opsbook.backup.helper": self.label},
            "HostConfig": self.host_config,
        }
        try:
            return self.client.create_container(body)
        except DockerError as exc:
            raise BackupError(self.code, "cannot create the restore helper from %s: %s" % (self.image, exc)) from exc

    def run(self, mode: str, content: str = "") -> None:
        run_helper(self.client, self.helper(mode, content), "%s of %s" % (mode, self.root), self.timeout, self.code)

    def remove(self, hid: str) -> None:
        remove_quiet(self.client, hid)


def run_on_host(root: str, mode: str, content: str = "", timeout: float = 3600.0, code: int = EXIT_RESTORE) -> None:
    """One step of the same script on a directory of this host (type path: a bind-mounted directory), run by the
    host's sh through the collection's one command runner; a non-zero exit (a timeout too) fails with its stderr."""
    done = run_command(["sh", "-c", SCRIPT, "opsbook-swap", root.rstrip("/") or "/", mode, content], timeout=timeout)
    if not done.ok:
        raise BackupError(
            code, "restore step %s of %s exited with %s: %s" % (mode, root, done.rc, done.stderr.strip()[-1000:])
        )


def remove_quiet(client: DockerClient, cid: str) -> None:
    try:
        client.remove_container(cid, force=True)
    except DockerError:
        pass


def run_helper(client: DockerClient, hid: str, what: str, timeout: float, code: int = EXIT_RESTORE) -> None:
    """Start the created helper hid, wait for it and remove it; a non-zero exit fails with its stderr."""
    try:
        client.start_container(hid)
        status = client.wait_container(hid, timeout=timeout)
        if status != 0:
            _out, err = client.container_logs(hid, tail=20)
            raise BackupError(code, "restore helper (%s) exited with %s: %s" % (what, status, err.strip()[-1000:]))
    except DockerError as exc:
        raise BackupError(code, "restore helper (%s): %s" % (what, exc)) from exc
    finally:
        remove_quiet(client, hid)


__all__ = ["MARKER", "NEW", "OLD", "SCRIPT", "DirectorySwap", "remove_quiet", "run_helper", "run_on_host"]
