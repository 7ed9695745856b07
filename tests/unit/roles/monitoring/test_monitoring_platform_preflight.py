# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""monitoring_platform and the monitoring_http_* settings, offline: the preflight refuses an unknown platform and
malformed metric settings, naming the variable and changing nothing; every platform's profile passes."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name


from ansible_collections.opsbook.stack.tests.unit.local_play import run_each
from ansible_collections.opsbook.stack.tests.unit.roles.monitoring.conftest import (
    PLATFORMS,
    preflight,
    profile_variables,
)

REFUSED = {
    "unknown-platform": ({"monitoring_platform": "dify"}, 'monitoring_platform is "dify", which names no platform'),
    "metric-name": ({"monitoring_http_requests_metric": "http requests"}, "monitoring_http_requests_metric"),
    "label-name": ({"monitoring_http_error_label": "status-code"}, "monitoring_http_error_label"),
    "operator": ({"monitoring_http_error_operator": "=="}, "monitoring_http_error_operator one of"),
    "quote": ({"monitoring_http_error_value": '5.."} or vector(1) or {a="'}, "monitoring_http_error_value"),
    "unit": ({"monitoring_http_duration_unit": "nanoseconds"}, "monitoring_http_duration_unit seconds"),
}


def test_the_preflight_refuses_an_unknown_platform_or_malformed_metric_settings_naming_them(tmp_path):
    runs = run_each(tmp_path, {name: case[0] for name, case in REFUSED.items()}, preflight)
    for name in sorted(REFUSED):
        done, named = runs[name], REFUSED[name][1]
        assert done.returncode != 0, (name, done.stdout)
        assert named in done.stdout and "Nothing was changed" in done.stdout, (name, done.stdout)


def test_every_platform_profile_passes(tmp_path):
    runs = run_each(tmp_path, {p: profile_variables(p) for p in PLATFORMS}, preflight)
    for platform, done in runs.items():
        assert done.returncode == 0, (platform, done.stdout + done.stderr)
