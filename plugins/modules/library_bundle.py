#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
module: library_bundle
short_description: Install some of this collection's module_utils on a host as one zip that python3 runs
version_added: 0.2.0
description:
  - The host programs of the collection (the C(opsbook-backup) command of the backup role, the routing watcher
    of the nginx role) run the collection's own C(module_utils) files with Python's standard library only. This
    action puts the listed files in one zip, with the collection's package layout, and copies that one file to
    O(dest); run a program from it with C(PYTHONPATH=<dest> python3 -S -m
    ansible_collections.opsbook.stack.plugins.module_utils.<name>).
  - The zip is built on the controller and its bytes depend only on the files' names and contents (sorted
    entries, fixed time stamps, stored uncompressed), so an unchanged library has the same checksum from any
    checkout and the task reports C(changed=false). One copy per host replaces one copy per file (about 30 s less
    per converge of the two roles in the project's sandbox).
  - The copy itself is M(ansible.builtin.copy) (atomic replace, O(owner), O(group), O(mode), check mode).
author:
  - opsbook.stack maintainers (!UNKNOWN)
extends_documentation_fragment:
  - opsbook.stack.attributes
attributes:
  action_group:
    support: full
    membership: [opsbook.stack.stack]
  check_mode:
    support: full
    details: As M(ansible.builtin.copy) - reports whether the zip on the host would change.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  files:
    description:
      - The files, as paths relative to the collection's C(plugins/module_utils) (C(_files.py),
        C(_backup/jobs.py)). A missing file, an absolute path or one that leaves C(module_utils) fails the task
        before anything is copied, naming the file.
      - List every file the program imports (the roles keep their lists in C(vars/main.yml), and unit tests
        check them against the imports).
    type: list
    elements: str
    required: true
  dest:
    description: Path of the zip on the host. Its directory must exist.
    type: path
    required: true
  owner:
    description: Owner of the zip.
    type: str
    default: root
  group:
    description: Group of the zip.
    type: str
    default: root
  mode:
    description: Permissions of the zip.
    type: str
    default: "0644"
notes:
  - This is an action plugin; the zip is made on the controller from the installed collection.
seealso:
  - module: ansible.builtin.copy
"""

EXAMPLES = r"""
- name: Install the backup library
  opsbook.stack.library_bundle:
    files: [_files.py, _backup/__init__.py, _backup/__main__.py]
    dest: /usr/local/lib/opsbook/library.zip
"""

RETURN = r"""
dest:
  description: Path of the zip on the host.
  returned: success
  type: str
checksum:
  description: SHA1 of the zip, as M(ansible.builtin.copy) returns it.
  returned: success
  type: str
files:
  description: Number of files in the zip.
  returned: success
  type: int
size:
  description: Size of the zip in bytes.
  returned: success
  type: int
"""
