# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Run a module's main() in the test process, as Ansible would, and read the result it prints."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import contextlib
import json
import typing as t

import pytest
from ansible.module_utils import basic

try:  # ansible-core >= 2.19
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # older cores: set the arguments the way AnsibleModule reads them
    from unittest import mock

    @contextlib.contextmanager
    def patch_module_args(args=None):
        data = json.dumps({"ANSIBLE_MODULE_ARGS": args or {}}).encode()
        with mock.patch.object(basic, "_ANSIBLE_ARGS", data):
            yield


def run_module(module: t.Any, args: dict, capsys) -> dict:
    """Run module.main() with args and return the JSON result it printed (it always exits)."""
    with patch_module_args(args), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


__all__ = ["patch_module_args", "run_module"]
