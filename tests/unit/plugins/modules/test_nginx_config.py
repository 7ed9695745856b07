# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The nginx_config module as Ansible runs it, against the real nginx binary and a configuration tree in a
temporary directory (`nginx -t -c <tmp>/nginx.conf`; no nginx is started here)."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import shutil

import pytest

from ansible_collections.opsbook.stack.plugins.modules import nginx_config
from ansible_collections.opsbook.stack.tests.unit.module_args import run_module

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
needs_nginx = pytest.mark.skipif(NGINX is None, reason="no nginx binary here (apt-get install nginx-light)")

GOOD = "server {\n    listen 127.0.0.1:18089;\n    location / { return 204; }\n}\n"
BROKEN = "server {\n    listen 127.0.0.1:18089;\n    no_such_directive on;\n}\n"


@pytest.fixture
def conf(tmp_path):
    """<tmp>/conf/nginx.conf including conf.d/*.conf, every path absolute (no -p needed)."""
    root = tmp_path / "conf"
    (root / "conf.d").mkdir(parents=True)
    run = tmp_path / "run"
    run.mkdir()
    (root / "nginx.conf").write_text(
        "error_log %(run)s/error.log;\npid %(run)s/nginx.pid;\nevents { worker_connections 16; }\n"
        "http {\n    access_log off;\n    client_body_temp_path %(run)s/body;\n    proxy_temp_path %(run)s/proxy;\n"
        "    fastcgi_temp_path %(run)s/fastcgi;\n    uwsgi_temp_path %(run)s/uwsgi;\n    scgi_temp_path %(run)s/scgi;\n"
        "    include conf.d/*.conf;\n}\n" % {"run": run}
    )
    return root


def args_for(conf, files, **extra) -> dict:
    return {
        "files": files,
        "config": str(conf / "nginx.conf"),
        "nginx_binary": NGINX or "nginx",
        "reload": False,
        "lock_path": str(conf.parent / "lock"),
        **extra,
    }


@needs_nginx
def test_check_mode_diff_then_real_then_quiet(conf, capsys):
    dest = str(conf / "conf.d" / "status.conf")
    args = args_for(conf, [{"dest": dest, "content": GOOD}])
    checked = run_module(nginx_config, {**args, "_ansible_check_mode": True, "_ansible_diff": True}, capsys)
    assert checked["changed"] is True and checked["changed_files"] == [dest]
    assert checked["diff"] == [{"before": "", "after": GOOD, "before_header": dest, "after_header": dest}]
    assert not os.path.exists(dest)
    real = run_module(nginx_config, args, capsys)
    assert real["changed"] is True and real["reloaded"] is False and "reload=false" in real["note"]
    assert open(dest, encoding="utf-8").read() == GOOD
    assert oct(os.stat(dest).st_mode & 0o777) == "0o644"
    quiet = run_module(nginx_config, {**args, "_ansible_diff": True}, capsys)
    assert quiet["changed"] is False and "diff" not in quiet
    assert quiet["files"] == [{"dest": dest, "changed": False}]


@needs_nginx
def test_rejected_in_the_copy_changes_nothing_live(conf, capsys):
    dest = conf / "conf.d" / "status.conf"
    dest.write_text(GOOD)
    result = run_module(nginx_config, args_for(conf, [{"dest": str(dest), "content": BROKEN}]), capsys)
    assert result["failed"] is True and result["changed"] is False
    assert result["rejected_in"] == "copy"
    assert 'unknown directive "no_such_directive" in %s:3' % dest in result["nginx_error"]
    assert result["error_file"] == str(dest) and result["error_line"] == 3
    assert "nothing live was changed" in result["msg"]
    assert dest.read_text() == GOOD


@needs_nginx
def test_several_files_from_src_with_a_mode(conf, tmp_path, capsys):
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "a.conf").write_text(GOOD)
    (staged / "b.conf").write_text("# nothing yet\n")
    files = [
        {"src": str(staged / "a.conf"), "dest": str(conf / "conf.d" / "a.conf")},
        {"src": str(staged / "b.conf"), "dest": str(conf / "conf.d" / "b.conf"), "mode": "0600"},
    ]
    result = run_module(nginx_config, args_for(conf, files), capsys)
    assert result["changed"] is True and len(result["changed_files"]) == 2
    assert (conf / "conf.d" / "a.conf").read_text() == GOOD
    assert oct(os.stat(conf / "conf.d" / "b.conf").st_mode & 0o777) == "0o600"
    (staged / "b.conf").write_text("# now something\n")
    again = run_module(nginx_config, args_for(conf, files), capsys)
    assert again["changed_files"] == [str(conf / "conf.d" / "b.conf")]


def test_a_missing_src_fails_before_anything(tmp_path, capsys):
    result = run_module(
        nginx_config,
        {"files": [{"src": str(tmp_path / "nope"), "dest": str(tmp_path / "x.conf")}], "lock_path": None},
        capsys,
    )
    assert result["failed"] is True and "cannot read the files to install" in result["msg"]
    assert not (tmp_path / "x.conf").exists()


def test_content_and_src_exclude_each_other(tmp_path, capsys):
    result = run_module(
        nginx_config, {"files": [{"src": "/a", "content": "x", "dest": str(tmp_path / "x.conf")}]}, capsys
    )
    assert result["failed"] is True and "mutually exclusive" in result["msg"]
    result = run_module(nginx_config, {"files": [{"dest": str(tmp_path / "x.conf")}]}, capsys)
    assert result["failed"] is True and "one of the following is required" in result["msg"]


@pytest.mark.parametrize("value, mode", [("0644", 0o644), ("600", 0o600), ("0o640", 0o640), (420, 0o644)])
def test_parse_mode(value, mode):
    assert nginx_config.parse_mode(value) == mode


@pytest.mark.parametrize("value", ["", "rw-r--r--", "0899"])
def test_parse_mode_rejects(value):
    with pytest.raises(ValueError, match="octal"):
        nginx_config.parse_mode(value)
