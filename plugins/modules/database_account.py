#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
module: database_account
short_description: A least-privilege monitoring account in a MariaDB, MySQL or PostgreSQL container
version_added: 0.2.0
description:
  - Creates, corrects or drops the account a metrics exporter connects as, so that no exporter needs the server's
    admin account. The account may read the server's status and nothing of the application's data.
  - MariaDB and MySQL get C('<name>'@'<host>') with C(PROCESS), the replication status privileges (C(BINLOG MONITOR)
    and C(SLAVE MONITOR) on MariaDB 10.5 and later, C(REPLICATION CLIENT) before and on MySQL) and C(SELECT) on
    C(performance_schema), what mysqld_exporter's default collectors read. Every other privilege the account holds
    is revoked.
  - PostgreSQL gets a C(LOGIN) role with every other attribute off (C(SUPERUSER), C(CREATEROLE), C(CREATEDB),
    C(REPLICATION), C(BYPASSRLS)), a member of C(pg_monitor) and of no other role.
  - The module runs the server's own client in O(container) through the Docker Engine API, as the admin account
    whose password the container's environment holds (C(MARIADB_ROOT_PASSWORD) or C(MYSQL_ROOT_PASSWORD);
    C(POSTGRES_USER) and C(POSTGRES_PASSWORD)). Statements that carry O(password) go to the client's standard
    input, never into a command line that C(ps) on the host shows.
  - It writes only when the account differs from what it should be; the password is compared by logging in with
    it (MariaDB, MySQL) or against the stored SCRAM-SHA-256 or MD5 verifier (PostgreSQL), so a changed O(password)
    is applied and an unchanged one reports C(changed=false).
author:
  - opsbook.stack maintainers (!UNKNOWN)
extends_documentation_fragment:
  - opsbook.stack.attributes
  - opsbook.stack.docker
attributes:
  action_group:
    support: full
    membership: [opsbook.stack.stack]
  check_mode:
    support: full
    details: Reads the account and reports what would change (RV(differences)); writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  container:
    description: Name or ID of the running database server container.
    type: str
    required: true
  type:
    description: The server in O(container).
    type: str
    choices: [mariadb, mysql, postgres]
    required: true
  name:
    description:
      - The account's name, 1-32 letters, digits and C(_), starting with a letter or C(_). The servers' own accounts
        (C(root), C(postgres), C(mariadb.sys), ...) are refused.
    type: str
    default: opsbook_exporter
  password:
    description: The account's password. Required with O(state=present). Never printed.
    type: str
  host:
    description: MariaDB and MySQL only, the account's host part; V(%) lets the exporter connect from its own
      container on the application network.
    type: str
    default: "%"
  state:
    description: V(present) creates or corrects the account; V(absent) drops it.
    type: str
    choices: [present, absent]
    default: present
  timeout:
    description: Seconds a client command in the container may take.
    type: float
    default: 60
notes:
  - The account is part of the server's data, so a restore of the server's accounts (M(opsbook.stack.restore) of an
    C(accounts.sql.zst)) brings it back without its password; the next run of this module sets the password again.
seealso:
  - module: opsbook.stack.backup
"""

EXAMPLES = r"""
- name: The MariaDB exporter's own account
  opsbook.stack.database_account:
    container: agentchat-mysql-1
    type: mariadb
    name: opsbook_exporter
    password: "{{ vault_exporter_password }}"
  no_log: true

- name: The PostgreSQL exporter's own account
  opsbook.stack.database_account:
    container: helloagents-postgres-1
    type: postgres
    password: "{{ vault_pg_exporter_password }}"
  no_log: true
"""

RETURN = r"""
account:
  description: The account as the server held it before this run (no password).
  returned: always
  type: dict
  sample: {"exists": true, "global": ["BINLOG MONITOR", "PROCESS", "SLAVE MONITOR"],
           "schemas": ["performance_schema:SELECT"]}
wanted:
  description: The account as it should be (MariaDB/MySQL C(global) and C(schemas); PostgreSQL C(attributes) and
    C(member_of)).
  returned: always
  type: dict
differences:
  description: What differed and was (in check mode, would be) corrected; C(password) when the password did not
    match. With O(state=absent), C([exists]) when the account existed.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opsbook.stack.plugins.module_utils._argspec import docker_argument_spec
from ansible_collections.opsbook.stack.plugins.module_utils._db_account import AccountError, account_for, differences


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            **docker_argument_spec(),
            container=dict(type="str", required=True),
            type=dict(type="str", choices=["mariadb", "mysql", "postgres"], required=True),
            name=dict(type="str", default="opsbook_exporter"),
            password=dict(type="str", no_log=True),
            host=dict(type="str", default="%"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            timeout=dict(type="float", default=60.0),
        ),
        required_if=[("state", "present", ["password"])],
        supports_check_mode=True,
    )
    p = module.params
    if p["state"] == "present" and not p["password"]:
        module.fail_json(msg="password is empty: give the account a password (an empty one is refused)")
    try:
        account = account_for(p["type"], p["container"], p["name"], p["docker_host"], p["host"], p["timeout"])
        now, differ = differences(account, p["password"] or "")
        wanted = account.wanted()
        if p["state"] == "absent":
            wanted = {"exists": False}
            differ = ["exists"] if now["exists"] else []
        if differ and not module.check_mode:
            if p["state"] == "absent":
                account.drop()
            else:
                account.apply(p["password"], now)
                left = differences(account, p["password"])[1]
                if left:
                    module.fail_json(
                        msg="account %s in %s still differs after the change: %s"
                        % (p["name"], p["container"], ", ".join(left)),
                        account=now,
                        wanted=wanted,
                    )
    except AccountError as exc:
        module.fail_json(msg="account %s in %s: %s" % (p["name"], p["container"], exc))
    module.exit_json(changed=bool(differ), account=now, wanted=wanted, differences=differ)


if __name__ == "__main__":
    main()
