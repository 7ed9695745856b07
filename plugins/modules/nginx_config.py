#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
module: nginx_config
short_description: Install Nginx configuration files so that Nginx never runs a configuration it rejects
version_added: 0.1.0
description:
  - Installs one or more Nginx configuration files (their content given inline, or read from a file on the
    target such as a staged template) through the collection's one Nginx activation, the same code that
    M(opsbook.stack.nginx_upstream) and the upgrade and rollback modules use.
  - Under one lock shared by every writer of the host's Nginx configuration, it copies the configuration tree
    into a scratch directory, lays the new files over the copy and runs C(nginx -t) on it, so a rejected file
    never goes live. Only then each file is written atomically, C(nginx -t) checks the live tree again, and
    Nginx is reloaded gracefully.
  - When the live check, the reload or anything else fails after a file went live, the previous files (or
    their absence) are put back and the task fails with Nginx's own error line.
  - Unchanged files are neither written, tested nor reloaded.
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
    details: Reads the files and reports which would change; nothing is written, tested or reloaded.
  diff_mode:
    support: full
  idempotent:
    support: full
    details: Files that already hold the content are not written, and nothing is reloaded.
options:
  files:
    description: The files to install, all in one activation (one test, one reload).
    type: list
    elements: dict
    required: true
    suboptions:
      dest:
        description: Path of the live file; with O(test_copy=true) it must lie in the directory of O(config).
        type: path
        required: true
      content:
        description: The file's content. Exactly one of O(files[].content) and O(files[].src) is required.
        type: str
      src:
        description: A file on the target whose content to install (for example a template staged beside).
        type: path
      mode:
        description: Permissions of the file when it is written, as an octal string.
        type: raw
        default: "0644"
  config:
    description: The main Nginx configuration file; its directory is the tree that O(test_copy) copies.
    type: path
    default: /etc/nginx/nginx.conf
  test_copy:
    description:
      - Check the new files with C(nginx -t) on a scratch copy of the configuration tree before any goes live.
      - With V(false) the files go live first and are put back when C(nginx -t) rejects them.
    type: bool
    default: true
  reload:
    description:
      - Reload Nginx gracefully after a change (only when it runs; a stopped Nginx reads the files at start).
      - V(false) leaves the reload to the caller, for example a handler.
    type: bool
    default: true
  nginx_binary:
    description: The nginx program used for C(nginx -t) (and C(nginx -s reload) without systemd).
    type: path
    default: nginx
  reload_command:
    description:
      - The reload command as a list of arguments.
      - Default C(systemctl reload nginx) under systemd, else C(nginx -s reload).
    type: list
    elements: str
  lock_path:
    description: The lock every writer of the host's Nginx configuration takes.
    type: path
    default: /run/lock/opsbook-nginx.lock
  lock_timeout:
    description: Seconds to wait for another writer (an upgrade switching upstreams) before failing with its name.
    type: float
    default: 300
seealso:
  - module: opsbook.stack.nginx_upstream
"""

EXAMPLES = r"""
- name: Publish a site checked with nginx -t before it goes live
  opsbook.stack.nginx_config:
    files:
      - dest: /etc/nginx/conf.d/status.conf
        content: |
          server {
              listen 127.0.0.1:8088;
              location / { return 204; }
          }

- name: Promote staged templates, leave the reload to a handler
  opsbook.stack.nginx_config:
    files:
      - src: /var/lib/opsbook/nginx/staged/nginx.conf
        dest: /etc/nginx/nginx.conf
      - src: /var/lib/opsbook/nginx/staged/conf.d/opsbook-site.conf
        dest: /etc/nginx/conf.d/opsbook-site.conf
    reload: false
  notify: Reload nginx
"""

RETURN = r"""
files:
  description: Each file and whether it changed.
  returned: always
  type: list
  elements: dict
  sample: [{"dest": "/etc/nginx/conf.d/status.conf", "changed": true}]
changed_files:
  description: The files that changed (were written, or would be in check mode).
  returned: always
  type: list
  elements: str
reloaded:
  description: Whether Nginx was reloaded.
  returned: always
  type: bool
reload_command:
  description: The reload command that ran.
  returned: always
  type: list
  elements: str
note:
  description: Why a change was not reloaded (check mode, Nginx not running, O(reload=false)).
  returned: always
  type: str
nginx_error:
  description: Nginx's own error line when C(nginx -t) rejected the files; paths name the live tree.
  returned: failure
  type: str
  sample: 'nginx: [emerg] unknown directive "bogus" in /etc/nginx/conf.d/status.conf:3'
rejected_in:
  description: V(copy) when the scratch copy was rejected (nothing live changed), V(live) when the live check was.
  returned: failure
  type: str
error_file:
  description: The file named in RV(nginx_error), when it names one.
  returned: failure
  type: str
error_line:
  description: The line named in RV(nginx_error), when it names one.
  returned: failure
  type: int
"""

import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opsbook.stack.plugins.module_utils._nginx import (
    DEFAULT_LOCK_PATH,
    DEFAULT_LOCK_WAIT_S,
    DEFAULT_NGINX_BINARY,
    DEFAULT_NGINX_CONF,
    FileChange,
    NginxConfigRejected,
    NginxControl,
    NginxError,
    activate_files,
)

FILE_OPTIONS = dict(
    dest=dict(type="path", required=True),
    content=dict(type="str"),
    src=dict(type="path"),
    mode=dict(type="raw", default="0644"),
)


def argument_spec() -> dict[str, t.Any]:
    return dict(
        files=dict(
            type="list",
            elements="dict",
            required=True,
            options=FILE_OPTIONS,
            mutually_exclusive=[("content", "src")],
            required_one_of=[("content", "src")],
        ),
        config=dict(type="path", default=DEFAULT_NGINX_CONF),
        test_copy=dict(type="bool", default=True),
        reload=dict(type="bool", default=True),
        nginx_binary=dict(type="path", default=DEFAULT_NGINX_BINARY),
        reload_command=dict(type="list", elements="str"),
        lock_path=dict(type="path", default=DEFAULT_LOCK_PATH),
        lock_timeout=dict(type="float", default=DEFAULT_LOCK_WAIT_S),
    )


def parse_mode(value: t.Any) -> int:
    """'0644' or 644 as octal digits, or an int already (YAML 0644 arrives as 420)."""
    if isinstance(value, int):
        return value
    text = str(value).strip().lower()
    text = text[2:] if text.startswith("0o") else text
    if not text or set(text) - set("01234567"):
        raise ValueError("mode %r is not an octal mode such as 0644" % (value,))
    return int(text, 8)


def file_change(item: dict[str, t.Any]) -> FileChange:
    if item["src"] is not None:
        with open(item["src"], "rb") as handle:
            data = handle.read()
    else:
        data = item["content"].encode("utf-8")
    return FileChange(item["dest"], data, parse_mode(item["mode"]))


def _diff(dest: str, before: bytes | None, after: bytes | None) -> dict[str, str]:
    def text(data: bytes | None) -> str:
        return "" if data is None else data.decode("utf-8", errors="replace")

    return {"before": text(before), "after": text(after), "before_header": dest, "after_header": dest}


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    p = module.params
    try:
        changes = [file_change(item) for item in p["files"]]
    except (OSError, ValueError) as exc:
        module.fail_json(msg="cannot read the files to install: %s" % exc)
    nginx = NginxControl(binary=p["nginx_binary"], config=p["config"], reload_command=p["reload_command"])
    try:
        done = activate_files(
            changes,
            nginx=nginx,
            check_mode=module.check_mode,
            reload=p["reload"],
            lock_path=p["lock_path"],
            lock_wait_s=p["lock_timeout"],
            test_copy=p["test_copy"],
            operation="opsbook.stack.nginx_config",
        )
    except NginxConfigRejected as exc:
        module.fail_json(msg=str(exc), changed=False, nginx_error=exc.nginx_error, **exc.evidence)
    except NginxError as exc:
        module.fail_json(msg=str(exc), changed=False, **exc.evidence)
    except OSError as exc:
        module.fail_json(msg="cannot install the Nginx files: %s; the previous files were put back" % exc)
    result: dict[str, t.Any] = dict(
        changed=done.changed,
        files=[{"dest": f.path, "changed": f.changed} for f in done.files],
        changed_files=done.changed_paths,
        reloaded=done.reloaded,
        reload_command=done.reload_command,
        note=done.note,
    )
    if done.changed and module._diff:
        result["diff"] = [_diff(f.path, f.previous, f.content) for f in done.files if f.changed]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
