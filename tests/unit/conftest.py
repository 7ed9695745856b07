# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Make `ansible_collections.opsbook.stack` importable under plain pytest.

The modules import their module_utils as `ansible_collections.opsbook.stack.plugins.module_utils...`, which
resolves only when the repository sits at `<dir>/ansible_collections/opsbook/stack` with `<dir>` on sys.path.
ansible-test provides that layout; for plain pytest a temporary tree with a symlink to this checkout does.
`ansible_collections` is a namespace package, so this tree coexists with the collections that the `ansible`
package installs into site-packages.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _collection_root() -> tuple[Path, Path | None]:
    """The directory to put on sys.path, and a temporary directory to remove at the end (or None)."""
    parts = REPO_ROOT.parts
    if len(parts) >= 3 and parts[-3:] == ("ansible_collections", "opsbook", "stack"):
        return REPO_ROOT.parents[2], None  # already checked out in a collection tree (ansible-test)
    tmp = Path(tempfile.mkdtemp(prefix="opsbook-stack-pytest-"))
    namespace = tmp / "ansible_collections" / "opsbook"
    namespace.mkdir(parents=True)
    os.symlink(REPO_ROOT, namespace / "stack", target_is_directory=True)
    return tmp, tmp


_ROOT, _TMP = _collection_root()
sys.path.insert(0, str(_ROOT))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "docker: talks to the real Docker Engine on /var/run/docker.sock (skipped when it is absent)"
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _TMP is not None:
        shutil.rmtree(_TMP, ignore_errors=True)
