#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
module: restore
short_description: Verify a backup, restore it, or prove it restores in a throwaway container
version_added: 0.1.0
description:
  - Every action verifies first. The size and sha256 of every artifact of the backup must match its manifest,
    otherwise the task fails naming the file and both hashes, and nothing is touched.
  - O(state=restored) restores into the component's own container (MariaDB/MySQL databases are dropped and
    recreated from the dump, PostgreSQL databases are dropped with C(FORCE) and recreated by C(pg_restore
    --create), Redis is stopped, gets the RDB file and is started, Prometheus is stopped while its TSDB volume's
    content is replaced by the snapshot, a volume's users are stopped while the archive is extracted over it).
    Stopping the application's writers and checking its health afterwards is the
    playbook's job.
  - O(state=drilled) restores into a throwaway container of the same image, checks it (row counts and
    C(CHECKSUM TABLE) for MariaDB, C(pg_restore) and exact row counts for PostgreSQL, C(DBSIZE) for Redis),
    removes it and records the drill's duration in the metrics.
  - O(state=verified) only verifies the checksums.
  - Takes the component's lock, so a restore never runs beside a backup of the same component.
author:
  - opsbook.stack maintainers (!UNKNOWN)
extends_documentation_fragment:
  - opsbook.stack.attributes
  - opsbook.stack.backup
  - opsbook.stack.docker
attributes:
  action_group:
    support: full
    membership: [opsbook.stack.stack]
  check_mode:
    support: full
    details: Check mode verifies the checksums and returns the plan of the restore; it restores nothing.
  diff_mode:
    support: none
  idempotent:
    support: none
    details: A restore always reports a change; O(state=verified) and O(state=drilled) never change the target.
options:
  backup_id:
    description: The backup to use; C(latest) is the newest committed one.
    type: str
    default: latest
  state:
    description: What to do with the backup.
    type: str
    choices: [restored, drilled, verified]
    default: restored
  databases:
    description: Restore only these databases (the PostgreSQL globals are always applied).
    type: list
    elements: str
    default: []
  age_identity:
    description: age identity (private key) file that decrypts an encrypted backup; overrides the one in O(config).
    type: path
  project_lock:
    description: The project's lock file (the one upgrade and rollback take); held during the restore when set.
    type: path
seealso:
  - module: opsbook.stack.backup
"""

EXAMPLES = r"""
- name: Prove the newest MariaDB backup restores (throwaway container)
  opsbook.stack.restore:
    component: agentchat-mysql
    type: mariadb
    container: agentchat-mysql-1
    state: drilled
    metrics_dir: /var/lib/prometheus/node-exporter

- name: Refuse early when the newest backup of a role-managed job does not verify
  opsbook.stack.restore:
    component: mysql
    config: /etc/opsbook/backup/mysql.json
    state: verified

- name: Restore a given backup into the running database (writers stopped before)
  opsbook.stack.restore:
    component: agentchat-mysql
    type: mariadb
    container: agentchat-mysql-1
    backup_id: 20261122T043947Z
"""

RETURN = r"""
backup_id:
  description: The backup used.
  returned: success
  type: str
  sample: 20261122T043947Z
restored:
  description: The artifacts restored.
  returned: O(state=restored)
  type: list
  elements: str
drill:
  description: The drill's report (container, table counts, checksums, matches_source, duration_s).
  returned: O(state=drilled)
  type: dict
plan:
  description: The restore plan (backup, verification result, steps).
  returned: always
  type: dict
failure_class:
  description: Class of the failure (verify_failed, restore_failed, drill_failed, ...).
  returned: failure
  type: str
exit_code:
  description: The command line's exit code for this failure.
  returned: failure
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opsbook.stack.plugins.module_utils._argspec import docker_argument_spec
from ansible_collections.opsbook.stack.plugins.module_utils._backup import (
    EXIT_CLASSES,
    EXIT_DOCKER,
    EXIT_VERIFY,
    BackupError,
    plan_restore,
    run_drill,
    run_restore,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.argspec import (
    component_argument_spec,
    component_module_rules,
    job_from_params,
)
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerError

STATES = ("restored", "drilled", "verified")


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            **component_argument_spec(),
            **docker_argument_spec(),
            backup_id=dict(type="str", default="latest"),
            state=dict(type="str", choices=list(STATES), default="restored"),
            databases=dict(type="list", elements="str", default=[]),
            age_identity=dict(type="path"),
            project_lock=dict(type="path"),
        ),
        supports_check_mode=True,
        **component_module_rules(),
    )
    p = module.params
    result: dict = {"changed": False}
    try:
        # databases selects what to restore; the component itself is the whole backup.
        settings, spec = job_from_params(p, exclude=("databases",))
        if p["age_identity"]:
            settings.age_identity = p["age_identity"]
        plan = plan_restore(spec, settings, p["backup_id"])
        result.update(plan=plan, backup_id=plan["backup_id"])
        if not plan["verified"]:
            module.fail_json(
                msg="backup %s of %s fails verification, refusing to use it: %s"
                % (plan["backup_id"], spec.name, "; ".join(plan["problems"])),
                failure_class=EXIT_CLASSES[EXIT_VERIFY],
                exit_code=EXIT_VERIFY,
                **result,
            )
        if p["state"] == "verified":
            module.exit_json(**result)
        if module.check_mode:
            # Nothing is restored in check mode: the plan says what a real run would do.
            result["changed"] = p["state"] == "restored"
            result["msg"] = "check mode: backup %s verified; would %s" % (
                plan["backup_id"],
                "restore it" if p["state"] == "restored" else "drill it",
            )
            module.exit_json(**result)
        if p["state"] == "drilled":
            result["drill"] = run_drill(spec, settings, plan["backup_id"])
        else:
            done = run_restore(
                spec, settings, plan["backup_id"], databases=p["databases"] or None, project_lock=p["project_lock"]
            )
            result.update(changed=True, restored=done["restored"], duration_s=done["duration_s"])
    except BackupError as exc:
        module.fail_json(
            msg=exc.message, failure_class=exc.failure_class, exit_code=exc.exit_code, evidence=exc.evidence, **result
        )
    except (DockerError, OSError) as exc:
        module.fail_json(
            msg="restore of %s failed: %s" % (p["component"], exc),
            failure_class="docker",
            exit_code=EXIT_DOCKER,
            **result,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
