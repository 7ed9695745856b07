# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Bundles: some of this collection's module_utils files as one zip that python3 imports on a host.

Private to this collection: not a public API, it may change in any release.

The host programs (the backup command, the routing watcher) run the collection's own files with the standard
library only: ``PYTHONPATH=<zip> python3 -S -m ansible_collections.opsbook.stack.plugins.module_utils.<name>``.
One file instead of a tree means one copy (and, when nothing changed, one checksum) per host instead of one per
file. The bytes depend only on the files' names and contents (sorted entries, fixed timestamps and permissions),
so an unchanged library gives the same checksum from any checkout and a converge reports ``changed=false``.
Used by the action plugin ``opsbook.stack.library_bundle`` and by the unit tests that run the programs.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import io
import os
import posixpath
import typing as t
import zipfile

# Where the files sit inside the zip: the collection's layout, so that their absolute imports resolve.
PACKAGE = "ansible_collections/opsbook/stack/plugins/module_utils"
# 1980-01-01, the earliest time a zip entry can carry: no file time of the checkout reaches the bytes.
STAMP = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644
DIR_MODE = 0o040755


class BundleError(ValueError):
    """A listed file is missing, or its name leaves module_utils; the message names it."""


def module_utils_dir() -> str:
    """The module_utils directory of this collection (where this file is)."""
    return os.path.dirname(os.path.abspath(__file__))


def _checked(names: t.Iterable[str]) -> list[str]:
    out: set[str] = set()
    for name in names:
        clean = posixpath.normpath(str(name))
        if not clean.endswith(".py") or clean.startswith(("/", "..")) or clean != str(name):
            raise BundleError(
                "%r is not a .py file path relative to module_utils (like _files.py or _backup/jobs.py)" % name
            )
        out.add(clean)
    if not out:
        raise BundleError("the list of files is empty: name at least one module_utils file")
    return sorted(out)


def _entry(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=STAMP)
    info.external_attr = mode << 16
    info.create_system = 3  # Unix, so the mode bits above are read as such
    if name.endswith("/"):
        info.external_attr |= 0x10  # the MS-DOS directory flag
    # Stored, not deflated: a few hundred KiB, and no zlib version can change the bytes.
    info.compress_type = zipfile.ZIP_STORED
    return info


def build(names: t.Iterable[str], root: str | None = None) -> bytes:
    """The zip of the named files (paths relative to module_utils, e.g. ``_backup/jobs.py``).

    Directory entries are written too: Python's zipimport finds the namespace packages
    (``ansible_collections``, ``opsbook`` ...) only through them.
    """
    root = root or module_utils_dir()
    files = _checked(names)
    directories: set[str] = set()
    for name in files:
        parts = (PACKAGE + "/" + name).split("/")[:-1]
        directories.update("/".join(parts[: i + 1]) + "/" for i in range(len(parts)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for directory in sorted(directories):
            archive.writestr(_entry(directory, DIR_MODE), b"")
        for name in files:
            path = os.path.join(root, *name.split("/"))
            try:
                with open(path, "rb") as handle:
                    data = handle.read()
            except OSError as exc:
                raise BundleError("cannot read module_utils file %s: %s" % (name, exc.strerror or exc)) from exc
            archive.writestr(_entry(PACKAGE + "/" + name, FILE_MODE), data)
    return buffer.getvalue()


__all__ = ["PACKAGE", "BundleError", "build", "module_utils_dir"]
