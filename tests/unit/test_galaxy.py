# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""galaxy.yml declares the collections that what ships (roles, playbooks, plugins, meta) uses, and no others;
its repository, documentation, homepage and issues fields are set."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("roles", "playbooks", "plugins", "meta")
# A fully qualified name of another collection's content: namespace.collection.name (ours and ansible.builtin
# are not dependencies).
FQCN = re.compile(r"\b([a-z_]+)\.([a-z_]+)\.[a-z_][a-z0-9_]*\b")
NAMESPACES = ("community", "ansible", "containers", "kubernetes", "amazon", "cisco")
NOT_DEPENDENCIES = {"ansible.builtin", "ansible.legacy", "opsbook.stack", "ansible.module_utils", "ansible.plugins"}


def used_collections() -> dict[str, str]:
    used: dict[str, str] = {}
    for top in SHIPPED:
        for path in sorted((ROOT / top).rglob("*")):
            if not path.is_file() or path.suffix not in (".yml", ".yaml", ".py", ".j2"):
                continue
            for match in FQCN.finditer(path.read_text(encoding="utf-8", errors="replace")):
                name = "%s.%s" % match.groups()
                if match.group(1) in NAMESPACES and name not in NOT_DEPENDENCIES:
                    used.setdefault(name, str(path.relative_to(ROOT)))
    return used


def galaxy() -> dict:
    return yaml.safe_load((ROOT / "galaxy.yml").read_text(encoding="utf-8"))


def test_every_collection_used_is_declared_and_every_declared_one_is_used():
    used = used_collections()
    declared = set(galaxy().get("dependencies") or {})
    assert not set(used) - declared, "used but not in galaxy.yml dependencies: %s" % {
        name: used[name] for name in set(used) - declared
    }
    unused = sorted(declared - set(used))
    assert not unused, "declared in galaxy.yml but nothing shipped uses: %s" % unused


def test_the_project_links_are_set():
    data = galaxy()
    for key in ("repository", "documentation", "homepage", "issues"):
        assert str(data.get(key) or "").startswith("https://"), "galaxy.yml %s is not set" % key


def test_the_ansible_versions_claimed_are_the_ones_tested():
    """meta/runtime.yml and each role's meta claim only what the suite runs on: the ansible-core of
    requirements-dev.txt (issue 20, item 10: ">=2.17.0" was claimed while only 2.19 was tested)."""
    pinned = re.search(r"^ansible-core==(\d+)\.(\d+)\.", (ROOT / "requirements-dev.txt").read_text(), re.M)
    assert pinned, "requirements-dev.txt pins no ansible-core"
    tested = "%s.%s" % pinned.groups()
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text(encoding="utf-8"))
    assert runtime["requires_ansible"] == ">=%s.0" % tested
    for meta in sorted((ROOT / "roles").glob("*/meta/main.yml")):
        info = yaml.safe_load(meta.read_text(encoding="utf-8"))["galaxy_info"]
        assert str(info["min_ansible_version"]) == tested, meta
