# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""``python3 -m ansible_collections.opsbook.stack.plugins.module_utils._backup``: the opsbook-backup command.

Private to this collection: not a public API, it may change in any release.

The role copies the package with the files it needs to the host in one zip and runs this with that zip on
PYTHONPATH (standard library only, no Ansible on the host).
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

from ansible_collections.opsbook.stack.plugins.module_utils._backup.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
