# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one Nginx activation against the real nginx binary: a configuration tree under a temporary prefix,
`nginx -t -p <tmp> -c <tmp>/nginx.conf`, and for the reload a master of our own on a free loopback port (never
the system's nginx). The failure paths that need a failing reload use a recording runner instead."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import http.client
import json
import os
import shutil
import signal
import subprocess
import textwrap
import time

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils import _nginx
from ansible_collections.opsbook.stack.plugins.module_utils._nginx import (
    FileChange,
    Interrupted,
    NginxBusy,
    NginxConfigRejected,
    NginxControl,
    NginxError,
    NginxReloadFailed,
    activate,
    activate_files,
    error_location,
)
from ansible_collections.opsbook.stack.plugins.module_utils._process import CommandResult, run_command
from ansible_collections.opsbook.stack.tests.unit.http_fixtures import free_port

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
needs_nginx = pytest.mark.skipif(NGINX is None, reason="no nginx binary here (apt-get install nginx-light)")

MAIN_CONF = textwrap.dedent("""\
    worker_processes 1;
    error_log logs/error.log;
    pid logs/nginx.pid;
    events { worker_connections 64; }
    http {
        access_log off;
        client_body_temp_path temp/body;
        proxy_temp_path temp/proxy;
        fastcgi_temp_path temp/fastcgi;
        uwsgi_temp_path temp/uwsgi;
        scgi_temp_path temp/scgi;
        include conf.d/*.conf;
    }
""")


def site(port: int, body: str) -> str:
    return "server {\n    listen 127.0.0.1:%d;\n    location / { return 200 \"%s\\n\"; }\n}\n" % (port, body)


class Tree:
    """A configuration tree: <root>/conf/nginx.conf (+ conf.d/), prefix <root>/prefix with logs/ and temp/."""

    def __init__(self, root):
        self.root = root
        self.conf = root / "conf"
        (self.conf / "conf.d").mkdir(parents=True)
        (self.conf / "nginx.conf").write_text(MAIN_CONF)
        self.prefix = root / "prefix"
        (self.prefix / "logs").mkdir(parents=True)
        (self.prefix / "temp").mkdir()
        self.port = free_port()

    def control(self, **kwargs) -> NginxControl:
        kwargs.setdefault("pid_file", str(self.prefix / "logs" / "nginx.pid"))
        return NginxControl(
            binary=NGINX or "nginx",
            config=str(self.conf / "nginx.conf"),
            prefix=str(self.prefix),
            systemd_dir=str(self.root / "no-systemd"),
            **kwargs,
        )

    def path(self, rel: str) -> str:
        return str(self.conf / rel)


@pytest.fixture
def tree(tmp_path):
    return Tree(tmp_path)


@pytest.fixture
def master(tree):
    """A running nginx master of our own (high port, temporary prefix); stopped at the end."""
    (tree.conf / "conf.d" / "site.conf").write_text(site(tree.port, "one"))
    nginx = tree.control()
    started = run_command([nginx.binary, "-p", nginx.prefix, "-c", nginx.config])
    assert started.rc == 0, started.output
    wait_for(lambda: answer(tree.port) == "one")
    yield nginx
    pid = int(open(nginx.pid_file, encoding="ascii").read())
    os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)


def answer(port: int) -> str | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/")
        text = conn.getresponse().read().decode().strip()
        conn.close()
        return text
    except OSError:
        return None


def wait_for(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class Recorder:
    """Wraps a runner and records argv; `fail` maps a verb ("-t", "reload") to the rc it returns instead."""

    def __init__(self, inner=run_command, fail=None, on_test=None):
        self.inner = inner
        self.fail = dict(fail or {})
        self.on_test = on_test
        self.calls: list[list[str]] = []

    def __call__(self, argv):
        argv = list(argv)
        self.calls.append(argv)
        if "-t" in argv and self.on_test:
            self.on_test(argv)
        for verb, rc in self.fail.items():
            if verb in argv:
                return CommandResult(tuple(argv), rc, "", "%s failed (test)" % verb)
        return self.inner(argv)

    def count(self, verb: str) -> int:
        return sum(1 for c in self.calls if verb in c)


# --------------------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------------------


def test_error_location():
    assert error_location('nginx: [emerg] unknown directive "x" in /etc/nginx/conf.d/a.conf:12') == (
        "/etc/nginx/conf.d/a.conf",
        12,
    )
    assert error_location("nginx: configuration file test failed") is None


def test_control_argv_with_prefix_and_config():
    seen = []
    nginx = NginxControl(
        binary="nginx",
        config="/c/nginx.conf",
        prefix="/p",
        systemd_dir="/nonexistent",
        runner=lambda argv: seen.append(list(argv)) or CommandResult(tuple(argv), 0, "", ""),
    )
    nginx.test()
    nginx.test("/scratch/nginx.conf")
    assert seen == [
        ["nginx", "-t", "-p", "/p", "-c", "/c/nginx.conf"],
        ["nginx", "-t", "-p", "/p", "-c", "/scratch/nginx.conf"],
    ]
    assert nginx.reload_argv() == ["nginx", "-p", "/p", "-c", "/c/nginx.conf", "-s", "reload"]


# --------------------------------------------------------------------------------------------------------
# The real nginx: the copy, the live test, the lock
# --------------------------------------------------------------------------------------------------------


@needs_nginx
def test_copy_rejects_before_anything_goes_live(tree):
    live = tree.conf / "conf.d" / "site.conf"
    live.write_text(site(tree.port, "one"))
    recorder = Recorder()
    with pytest.raises(NginxConfigRejected) as caught:
        activate_files(
            [FileChange(str(live), b"server {\n    bogus_directive on;\n}\n")],
            nginx=tree.control(runner=recorder),
            lock_path=str(tree.root / "lock"),
            test_copy=True,
        )
    assert live.read_text() == site(tree.port, "one")  # never touched
    assert recorder.count("-t") == 1  # the copy only: nothing live to test again
    error = caught.value.nginx_error
    assert 'unknown directive "bogus_directive" in %s:2' % live in error  # the live path, not the scratch one
    assert caught.value.evidence["rejected_in"] == "copy"
    assert caught.value.evidence["error_file"] == str(live) and caught.value.evidence["error_line"] == 2
    assert "nothing live was changed" in str(caught.value)
    assert not [p for p in os.listdir(tree.root) if p.endswith("-nginx-check")]  # scratch removed


@needs_nginx
def test_copy_passes_then_live_then_quiet(tree):
    nginx = tree.control()
    paths = [tree.path("conf.d/a.conf"), tree.path("conf.d/b.conf")]
    changes = [FileChange(paths[0], site(tree.port, "a").encode()), FileChange(paths[1], b"# empty\n", 0o600)]
    done = activate_files(changes, nginx=nginx, lock_path=str(tree.root / "lock"), test_copy=True)
    assert done.changed and done.changed_paths == paths
    assert not done.reloaded and "not running" in done.note
    assert "test is successful" in done.nginx_test
    assert oct(os.stat(paths[0]).st_mode & 0o777) == "0o644" and oct(os.stat(paths[1]).st_mode & 0o777) == "0o600"
    again = activate_files(changes, nginx=nginx, lock_path=str(tree.root / "lock"), test_copy=True)
    assert not again.changed and again.nginx_test == ""
    assert sorted(os.listdir(tree.conf / "conf.d")) == ["a.conf", "b.conf"]  # no temporary files


@needs_nginx
def test_live_rejection_after_the_copy_passed_puts_the_previous_files_back(tree):
    """A relative include that resolves differently from the copy than from the live tree."""
    main = tree.conf / "nginx.conf"
    before = main.read_text()
    scratch_parent = tree.root / "scratch"
    scratch_parent.mkdir()
    (scratch_parent / "probe.conf").write_text("# harmless in the copy's parent\n")
    (tree.root / "probe.conf").write_text("this_breaks_live on;\n")
    new = before.replace("include conf.d/*.conf;", "include conf.d/*.conf;\n    include ../probe.conf;")
    with pytest.raises(NginxConfigRejected) as caught:
        activate_files(
            [FileChange(str(main), new.encode())],
            nginx=tree.control(),
            lock_path=None,
            test_copy=True,
            scratch_parent=str(scratch_parent),
        )
    assert main.read_text() == before
    assert "rejected the live configuration right after the promotion" in str(caught.value)
    assert '"this_breaks_live" in %s/../probe.conf:1' % tree.conf in caught.value.nginx_error
    assert caught.value.evidence["rejected_in"] == "live"
    assert caught.value.evidence["test_after_restore"] == "ok"


@needs_nginx
def test_reload_applies_the_new_site_to_a_running_master(tree, master):
    path = tree.path("conf.d/site.conf")
    done = activate(path, site(tree.port, "two"), nginx=master, lock_path=str(tree.root / "lock"), test_copy=True)
    assert done.changed and done.reloaded and done.previous == site(tree.port, "one")
    assert done.reload_command[-2:] == ["-s", "reload"]
    wait_for(lambda: answer(tree.port) == "two")


@needs_nginx
def test_a_rejected_site_leaves_the_running_master_serving(tree, master):
    path = tree.path("conf.d/site.conf")
    with pytest.raises(NginxConfigRejected):
        activate(path, "server { listen 127.0.0.1:%d; bogus; }\n" % tree.port, nginx=master, lock_path=None)
    assert open(path, encoding="utf-8").read() == site(tree.port, "one")
    assert answer(tree.port) == "one"


@needs_nginx
def test_failed_reload_puts_back_tests_and_reloads_again(tree, master):
    path = tree.path("conf.d/site.conf")
    recorder = Recorder(fail={"reload": 1})
    nginx = tree.control(runner=recorder)
    with pytest.raises(NginxReloadFailed, match=r"passed nginx -t but .* failed") as caught:
        activate(path, site(tree.port, "two"), nginx=nginx, lock_path=None)
    assert "put back" in str(caught.value)
    assert open(path, encoding="utf-8").read() == site(tree.port, "one")
    assert recorder.count("-t") == 2 and recorder.count("reload") == 2  # live test, reload, put back, test, reload
    assert answer(tree.port) == "one"


@needs_nginx
@pytest.mark.parametrize("boom", [KeyboardInterrupt, SystemExit, OSError])
def test_any_exception_while_live_puts_the_previous_file_back(tree, boom):
    path = tree.path("conf.d/site.conf")
    open(path, "w", encoding="utf-8").write(site(tree.port, "one"))

    def explode(argv):
        raise boom("while testing")

    with pytest.raises(boom):
        activate(path, site(tree.port, "two"), nginx=tree.control(runner=explode), lock_path=None)
    assert open(path, encoding="utf-8").read() == site(tree.port, "one")


@needs_nginx
def test_sigterm_while_live_puts_the_previous_file_back(tree):
    path = tree.path("conf.d/new.conf")
    recorder = Recorder(on_test=lambda argv: os.kill(os.getpid(), signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted):
        activate(path, site(tree.port, "two"), nginx=tree.control(runner=recorder), lock_path=None)
    assert not os.path.exists(path)  # it did not exist before
    assert signal.getsignal(signal.SIGTERM) is before


def test_files_outside_the_tree_cannot_be_checked_in_a_copy(tmp_path):
    (tmp_path / "conf").mkdir()
    nginx = NginxControl(config=str(tmp_path / "conf" / "nginx.conf"), runner=lambda argv: pytest.fail("ran"))
    with pytest.raises(NginxError, match="not inside the configuration tree"):
        activate_files(
            [FileChange(str(tmp_path / "elsewhere.conf"), b"x\n")], nginx=nginx, lock_path=None, test_copy=True
        )
    assert not (tmp_path / "elsewhere.conf").exists()


def test_check_mode_and_duplicates(tmp_path):
    nginx = NginxControl(runner=lambda argv: pytest.fail("ran %s" % argv))
    path = str(tmp_path / "x.conf")
    done = activate_files([FileChange(path, b"x\n")], nginx=nginx, check_mode=True, test_copy=True)
    assert done.changed and done.note.startswith("check mode") and not os.path.exists(path)
    with pytest.raises(NginxError, match="given twice"):
        activate_files([FileChange(path, b"x\n"), FileChange(path, b"y\n")], nginx=nginx, lock_path=None)


def test_a_held_lock_names_its_holder(tmp_path):
    lock = tmp_path / "opsbook-nginx.lock"
    holder = subprocess.Popen(
        [
            "python3",
            "-c",
            "import fcntl, json, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, json.dumps({'operation': 'rolling_upgrade demo', 'pid': os.getpid(), 'since': 0}).encode())\n"
            "print('held', flush=True)\n"
            "time.sleep(30)\n",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        nginx = NginxControl(runner=lambda argv: pytest.fail("ran while the lock was held"))
        started = time.monotonic()
        with pytest.raises(NginxBusy) as caught:
            activate(str(tmp_path / "x.conf"), "x\n", nginx=nginx, lock_path=str(lock), lock_wait_s=0.5)
        assert 0.4 < time.monotonic() - started < 5
        assert "rolling_upgrade demo (pid %d" % holder.pid in str(caught.value)
        assert caught.value.evidence["holder"]["operation"] == "rolling_upgrade demo"
        assert not (tmp_path / "x.conf").exists()
    finally:
        holder.kill()
        holder.wait()
    # Released: the next writer gets it and records itself.
    activate(str(tmp_path / "x.conf"), "x\n", nginx=NginxControl(runner=ok_runner), lock_path=str(lock), reload=False)
    assert json.loads(lock.read_text())["operation"] == "nginx: x.conf"


def ok_runner(argv):
    return CommandResult(tuple(argv), 0, "", "test is successful")


def test_upstream_reexports_the_one_activation():
    from ansible_collections.opsbook.stack.plugins.module_utils import _upstream

    assert _upstream.activate is _nginx.activate
    assert _upstream.NginxControl is _nginx.NginxControl
    assert _upstream.CommandResult is CommandResult
    assert issubclass(_nginx.NginxConfigRejected, _upstream.UpstreamError)
    assert issubclass(_nginx.NginxBusy, _upstream.UpstreamError)
