# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Run plays with the real ansible-playbook on localhost (local connection, this Python), the collection from
this checkout: what role and action-plugin tests use when the code under test is a task file or a plugin."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import os
import subprocess
import sys
import typing as t
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from ansible_collections.opsbook.stack import plugins

# The ansible_collections/ directory that holds this checkout as opsbook.stack.
COLLECTIONS_ROOT = Path(plugins.__path__[0]).parents[3]


def run_plays(
    tmp_path: Path, plays: list[dict[str, t.Any]], extra_vars: dict[str, t.Any] | None = None, *args: str
) -> subprocess.CompletedProcess:
    """Write `plays` to tmp_path/play.yml and run it; extra_vars go in as JSON (exact types, as an inventory
    gives them); args are more ansible-playbook arguments (--check)."""
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "localhost", "connection": "local", **play} for play in plays]))
    given = tmp_path / "extra-vars.json"
    given.write_text(json.dumps(dict(extra_vars or {}, ansible_python_interpreter=sys.executable)))
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_ROOT),
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        ANSIBLE_NOCOLOR="1",
    )
    return subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", "localhost,", "-e", "@%s" % given]
        + [str(playbook), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
    )


__all__ = ["COLLECTIONS_ROOT", "run_plays"]


def run_each(tmp_path: Path, cases: t.Mapping[str, t.Any], run: t.Callable[[Path, t.Any], t.Any], workers: int = 4):
    """run(tmp_path/<case>, value) for every case, `workers` at a time (each play in a directory of its own);
    case name -> what run returned."""
    names = sorted(cases)
    for name in names:
        (tmp_path / name).mkdir()
    with ThreadPoolExecutor(workers) as pool:
        futures = {name: pool.submit(run, tmp_path / name, cases[name]) for name in names}
        return {name: future.result() for name, future in futures.items()}
