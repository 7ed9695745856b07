# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""library_bundle: the zip of module_utils files the backup and nginx roles install, and the programs run from it.

The action plugin runs for real (ansible-playbook on localhost): changed, then changed=false, check mode, a bad
file name that changes nothing. The roles' file lists are checked against the imports of the programs, and each
program starts from its zip with `python3 -S` in a clean environment, as cron and systemd run it.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import ast
import grp
import hashlib
import io
import json
import os
import pwd
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from ansible_collections.opsbook.stack.plugins.action import library_bundle as action
from ansible_collections.opsbook.stack.plugins.module_utils import _bundle
from ansible_collections.opsbook.stack.plugins.modules import library_bundle as doc_module
from ansible_collections.opsbook.stack.tests.unit.local_play import run_plays

REPO = Path(__file__).resolve().parents[4]
MODULE_UTILS = REPO / "plugins" / "module_utils"
PREFIX = "ansible_collections.opsbook.stack.plugins.module_utils."
# The roles' lists and the module each program runs.
PROGRAMS = {
    "backup": ("__backup_lib_files", "_backup", ["--help"], "opsbook-backup"),
    "nginx": ("__nginx_watch_lib_files", "_routing_watch", ["--help"], "Nginx routes"),
}


def role_list(role: str) -> list[str]:
    with open(REPO / "roles" / role / "vars" / "main.yml", encoding="utf-8") as handle:
        return yaml.safe_load(handle)[PROGRAMS[role][0]]


def module_file(name: str) -> str:
    """``_backup.jobs`` -> ``_backup/jobs.py``, ``_backup`` -> ``_backup/__init__.py``."""
    path = name.replace(".", "/")
    return path + "/__init__.py" if (MODULE_UTILS / path).is_dir() else path + ".py"


def imports_of(relative: str) -> set[str]:
    """The collection's module_utils files one file imports (absolute and relative imports)."""
    tree = ast.parse((MODULE_UTILS / relative).read_text(encoding="utf-8"))
    package = relative.rsplit("/", 1)[0].replace("/", ".") if "/" in relative else ""
    if relative.endswith("__init__.py"):
        package = relative[: -len("/__init__.py")].replace("/", ".")
    found = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1] if node.level > 1 else base
                head = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module.startswith(PREFIX) or node.module == PREFIX[:-1]):
                head = node.module[len(PREFIX) :] if node.module != PREFIX[:-1] else ""
            else:
                continue
            names = [head + "." + alias.name if head else alias.name for alias in node.names]
            names.append(head)
        elif isinstance(node, ast.Import):
            names = [a.name[len(PREFIX) :] for a in node.names if a.name.startswith(PREFIX)]
        for name in names:
            if not name:
                continue
            candidate = module_file(name)
            if (MODULE_UTILS / candidate).exists():
                found.add(candidate)
    return found


def closure(start: str) -> set[str]:
    todo, seen = [start], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(imports_of(current) - seen)
        # A package's __init__ runs before any of its modules.
        parts = current.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            init = "/".join(parts[:i]) + "/__init__.py"
            if (MODULE_UTILS / init).exists() and init not in seen:
                todo.append(init)
    return seen


@pytest.mark.parametrize("role", sorted(PROGRAMS))
def test_each_roles_list_holds_what_its_program_imports(role):
    module = PROGRAMS[role][1]
    start = module_file(module)
    needed = closure(start)
    if (MODULE_UTILS / module).is_dir():
        needed |= closure(module + "/__main__.py")
    listed = set(role_list(role))
    assert needed <= listed, "add to roles/%s/vars/main.yml: %s" % (role, sorted(needed - listed))


@pytest.mark.parametrize("role", sorted(PROGRAMS))
def test_each_program_starts_from_its_zip_with_the_standard_library_only(role, tmp_path):
    module, argv, expected = PROGRAMS[role][1:]
    bundle = tmp_path / "lib.zip"
    bundle.write_bytes(_bundle.build(role_list(role)))
    proc = subprocess.run(
        ["/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable, "-S", "-m", PREFIX + module]
        + argv,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(bundle)},
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout


def test_the_bytes_depend_only_on_names_and_contents(tmp_path):
    names = ["_files.py", "_backup/errors.py"]
    first = _bundle.build(names)
    # Another checkout: same contents, other times and order.
    for name in names:
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((MODULE_UTILS / name).read_bytes())
        os.utime(target, (1_000_000_000, 1_000_000_000))
    assert _bundle.build(list(reversed(names)), root=str(tmp_path)) == first
    (tmp_path / "_files.py").write_bytes((MODULE_UTILS / "_files.py").read_bytes() + b"\n# changed\n")
    assert _bundle.build(names, root=str(tmp_path)) != first
    entries = zipfile.ZipFile(io.BytesIO(first)).namelist()
    assert entries[0] == "ansible_collections/" and _bundle.PACKAGE + "/_backup/errors.py" in entries


@pytest.mark.parametrize(
    "names, message",
    [
        (["/etc/passwd.py"], "'/etc/passwd.py' is not a .py file path relative to module_utils"),
        (["../modules/backup.py"], "is not a .py file path relative to module_utils"),
        (["_files.txt"], "is not a .py file path"),
        (["_no_such_file.py"], "cannot read module_utils file _no_such_file.py"),
        ([], "the list of files is empty"),
    ],
)
def test_a_bad_name_fails_naming_it(names, message):
    with pytest.raises(_bundle.BundleError, match=message.replace(".", r"\.").replace("(", r"\(")):
        _bundle.build(names)


def test_the_documented_options_are_the_actions_spec():
    doc = yaml.safe_load(doc_module.DOCUMENTATION)
    assert set(doc["options"]) == set(action.ARGUMENT_SPEC)
    for name, spec in action.ARGUMENT_SPEC.items():
        option = doc["options"][name]
        for key in ("type", "elements", "default"):
            assert option.get(key) == spec.get(key), "%s.%s" % (name, key)
        assert bool(option.get("required")) == bool(spec.get("required")), name
    runtime = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text(encoding="utf-8"))
    assert doc["attributes"]["action_group"]["membership"] == ["opsbook.stack.stack"]
    assert doc["module"] in runtime["action_groups"]["stack"]


def run_task(tmp_path: Path, args: dict, *extra: str) -> tuple[int, dict, str]:
    """The action in a play on localhost; its registered result (kept even in check mode and on failure)."""
    out = tmp_path / "out.json"
    out.unlink(missing_ok=True)
    keep = {"content": "{{ out | to_json }}", "dest": str(out)}
    tasks = [
        {"name": "Bundle", "opsbook.stack.library_bundle": args, "register": "out", "ignore_errors": True},
        {"name": "Keep", "check_mode": False, "ansible.builtin.copy": keep},
    ]
    proc = run_plays(tmp_path, [{"gather_facts": False, "tasks": tasks}], None, *extra)
    return proc.returncode, json.loads(out.read_text()) if out.exists() else {}, proc.stdout + proc.stderr


def test_the_action_copies_once_then_changes_nothing(tmp_path):
    dest = tmp_path / "lib" / "watch.zip"
    dest.parent.mkdir()
    owner, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    args = {"files": role_list("nginx"), "dest": str(dest), "owner": owner, "group": group, "mode": "0640"}

    rc, out, log = run_task(tmp_path, args, "--check")
    assert rc == 0, log[-3000:]
    assert out["changed"] is True and not dest.exists()  # check mode says what would change, and changes nothing

    rc, out, log = run_task(tmp_path, args)
    assert rc == 0, log[-3000:]
    assert out["changed"] is True and out["files"] == len(role_list("nginx"))
    data = dest.read_bytes()
    assert data == _bundle.build(role_list("nginx")) and out["size"] == len(data)
    assert out["checksum"] == hashlib.sha1(data).hexdigest()
    assert oct(dest.stat().st_mode & 0o777) == "0o640"

    rc, out, log = run_task(tmp_path, args)
    assert rc == 0 and out["changed"] is False, log[-3000:]


def test_a_missing_file_fails_the_task_naming_it_and_changes_nothing(tmp_path):
    dest = tmp_path / "watch.zip"
    dest.write_bytes(b"the previous library")
    rc, out, log = run_task(tmp_path, {"files": ["_files.py", "_gone.py"], "dest": str(dest)})
    assert rc == 0 and out["failed"] is True and out["changed"] is False, log[-3000:]  # the play ignores the error
    assert out["msg"] == "library_bundle: files: cannot read module_utils file _gone.py: No such file or directory"
    assert dest.read_bytes() == b"the previous library"
