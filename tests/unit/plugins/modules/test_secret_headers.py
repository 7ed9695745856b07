# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""A credential passed in `headers` (documented for Authorization) never reaches the output, not even at -vvv
where ansible prints each result's invocation.module_args (issue 20, item 3); other headers stay readable."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils._http import secret_header_values
from ansible_collections.opsbook.stack.tests.unit.local_play import run_plays

CANARY = "canary-7f3a9c-secret"
HEADERS = {
    "Authorization": "Bearer " + CANARY,
    "X-Api-Key": CANARY + "-key",
    "Cookie": "session=" + CANARY + "-cookie",
    "Host": "readable-host.example",
}


def test_only_the_credential_headers_are_secret():
    assert secret_header_values(HEADERS) == {
        "Bearer " + CANARY,
        CANARY + "-key",
        "session=" + CANARY + "-cookie",
    }
    assert not secret_header_values({"Host": "x", "Accept": "y", "X-Request-ID": "z", "Authorization": ""})
    assert not secret_header_values(None)


@pytest.mark.parametrize(
    "task",
    [
        {"opsbook.stack.prometheus_query": {"url": "http://127.0.0.1:9", "query": "up", "headers": HEADERS,
                                            "retries": 0}},
        {"opsbook.stack.alertmanager_silence": {"url": "http://127.0.0.1:9", "matchers": [
            {"name": "alertname", "value": "X"}], "headers": HEADERS}},
        {"opsbook.stack.health_check": {"probes": [{"name": "api", "type": "http", "url": "http://127.0.0.1:9/health",
                                                    "retries": 0, "headers": HEADERS}]}},
    ],
    ids=["prometheus_query", "alertmanager_silence", "health_check"],
)  # fmt: skip
def test_a_failed_call_at_vvv_shows_no_credential(tmp_path, task):
    # Nothing listens on port 9: each module fails, and a failed result carries the invocation too.
    done = run_plays(tmp_path, [{"gather_facts": False, "tasks": [{"name": "call", "ignore_errors": True, **task}]}],
                     None, "-vvv")  # fmt: skip
    output = done.stdout + done.stderr
    assert "invocation" in output and "module_args" in output, output[-3000:]
    assert CANARY not in output, [line for line in output.splitlines() if CANARY in line][:5]
    assert "readable-host.example" in output
