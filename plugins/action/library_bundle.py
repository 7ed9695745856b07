# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Action of opsbook.stack.library_bundle: zip module_utils files on the controller, then copy the one file."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import shutil
import tempfile

from ansible import constants as C
from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.opsbook.stack.plugins.module_utils._bundle import BundleError, build

# The options, as plugins/modules/library_bundle.py documents them (a unit test compares the two).
ARGUMENT_SPEC = {
    "files": {"type": "list", "elements": "str", "required": True},
    "dest": {"type": "path", "required": True},
    "owner": {"type": "str", "default": "root"},
    "group": {"type": "str", "default": "root"},
    "mode": {"type": "str", "default": "0644"},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = True
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp  # unused since ansible-core 2.5
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
        try:
            data = build(args["files"])
        except BundleError as exc:
            raise AnsibleActionFail("library_bundle: files: %s" % exc) from None  # the message names the file
        local_dir = tempfile.mkdtemp(dir=C.DEFAULT_LOCAL_TMP)
        try:
            local = os.path.join(local_dir, os.path.basename(args["dest"]) or "library.zip")
            with open(local, "wb") as handle:
                handle.write(data)
            copy_task = self._task.copy()
            copy_task.args.clear()
            copy_task.args.update(
                src=local, dest=args["dest"], owner=args["owner"], group=args["group"], mode=args["mode"]
            )
            copy_action = self._shared_loader_obj.action_loader.get(
                "ansible.legacy.copy",
                task=copy_task,
                connection=self._connection,
                play_context=self._play_context,
                loader=self._loader,
                templar=self._templar,
                shared_loader_obj=self._shared_loader_obj,
            )
            result.update(copy_action.run(task_vars=task_vars))
        finally:
            shutil.rmtree(local_dir, ignore_errors=True)
            self._remove_tmp_path(self._connection._shell.tmpdir)
        result.update(files=len(set(args["files"])), size=len(data))
        return result
