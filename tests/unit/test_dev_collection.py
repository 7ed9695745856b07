# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""`./dev` refuses to lint or run molecule while a copy of opsbook.stack sits in a default collections path,
where molecule would prefer it over the checkout (issue 20, item 12): no_stray_collection in dev, run by bash."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import subprocess
from pathlib import Path

from ansible_collections.opsbook.stack.tests.unit.test_dev_schedule import function


def check(tmp_path: Path) -> subprocess.CompletedProcess:
    script = (
        "set -euo pipefail\n"
        "die() { printf 'ERROR: %s\\n' \"$*\" >&2; exit 1; }\n"
        'ROOT=$1 VENV=$1/.venv COLL_ROOT=$1/build/collections HOME=$2\n'
        + function("no_stray_collection")
        + "no_stray_collection\necho clean\n"
    )
    root, home = tmp_path / "checkout", tmp_path / "home"
    (root / "build" / "collections" / "ansible_collections" / "opsbook" / "stack").mkdir(parents=True)
    (root / ".venv" / "lib" / "python3.11" / "site-packages" / "ansible_collections" / "community").mkdir(parents=True)
    home.mkdir(exist_ok=True)
    return subprocess.run(
        ["bash", "-c", script, "dev", str(root), str(home)], capture_output=True, text=True, check=False
    )


def test_the_checkout_alone_passes(tmp_path):
    done = check(tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "clean", done.stderr


def test_a_copy_in_the_users_collections_fails_naming_it(tmp_path):
    copy = tmp_path / "home" / ".ansible" / "collections" / "ansible_collections" / "opsbook" / "stack"
    copy.mkdir(parents=True)
    done = check(tmp_path)
    assert done.returncode == 1
    assert "would shadow this checkout: %s (remove it)" % copy in done.stderr


def test_a_copy_in_the_virtualenv_fails_too(tmp_path):
    site = tmp_path / "checkout" / ".venv" / "lib" / "python3.11" / "site-packages"
    (site / "ansible_collections" / "opsbook" / "stack").mkdir(parents=True)
    done = check(tmp_path)
    assert done.returncode == 1 and str(site) in done.stderr
