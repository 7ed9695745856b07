# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The monitoring role's basic auth hash: the task's own command (roles/monitoring/tasks/publish.yml), run as the
host runs it, gives the SHA-512 crypt(3) line Nginx's auth_basic checks, the same as Python's crypt module gave
before it left Python 3.13, and the same line on every run (the file does not change on a rerun)."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import hashlib
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import yaml

TASKS = Path(__file__).resolve().parents[4] / "roles" / "monitoring" / "tasks" / "publish.yml"


def hash_argv(salt: str) -> list[str]:
    task = next(t for t in yaml.safe_load(TASKS.read_text()) if t.get("name") == "Hash the basic auth passwords")
    argv = task["ansible.builtin.command"]["argv"]
    assert task["ansible.builtin.command"]["stdin_add_newline"] is False
    assert task.get("no_log") is True
    return [salt if "{{" in str(word) else str(word) for word in argv]


@pytest.mark.parametrize("password", ["s3cret pass", "p@ss:with;odd'chars\"", "ünïcødé-passwort-123"])
def test_the_hash_is_sha512_crypt_and_stable(password):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl on this machine")
    salt = hashlib.sha256(("admin" + "host1").encode()).hexdigest()[:16]
    argv = hash_argv(salt)
    runs = [
        subprocess.run(argv, input=password, capture_output=True, text=True, check=True).stdout.strip()
        for _run in range(2)
    ]
    assert runs[0] == runs[1]
    assert runs[0].startswith("$6$%s$" % salt) and len(runs[0].split("$")[3]) == 86
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = pytest.importorskip("crypt")  # Python 3.12 at most: what the role used before
    assert runs[0] == crypt.crypt(password, "$6$%s$" % salt)
