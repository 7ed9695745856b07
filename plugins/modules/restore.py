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
  - O(state=restored) then decodes every artifact it restores to nowhere (C(age -d | zstd -d), size and
    completeness checked), so a wrong age identity or a damaged archive fails here, before anything is stopped or
    dropped.
  - O(state=restored) restores beside the live data and swaps, so that a restore that fails before the swap
    leaves the previous data serving (docs/backup-states.md). PostgreSQL databases load into a new database that
    is renamed into place in one transaction. MariaDB/MySQL dumps load into a scratch schema whose tables move
    in by one C(RENAME TABLE) (a database with views, routines, triggers or events is reloaded from the proven
    dump instead); then the accounts of C(accounts.sql.zst) the server lacks are created with their passwords and
    every grant is given (a grant on a table this server does not have is skipped); accounts it has keep their
    passwords, root's among them, and none is dropped. Redis gets the RDB file beside its own, is stopped, the
    file is renamed over the old one, and it is started. Prometheus's snapshot and a volume's archive are extracted
    beside the live content, then the users are stopped and the content swapped (files created after the backup do
    not survive). A host directory (O(type=path)) is extracted beside its content by the host itself, the
    containers that bind-mount it are stopped, the content swapped the same way and the directory given its
    recorded mode and owner; a missing directory (a new host) is created.
  - Every restore writes its phase to C(<dest>/<component>/restore.run.json); a run after a killed one cleans
    up what that one left and restores from the start, and returns C(resumed).
    Stopping the application's writers and checking its health afterwards is the
    playbook's job.
  - O(state=drilled) restores into a throwaway container of the same image, checks it (row counts and
    C(CHECKSUM TABLE) and the accounts for MariaDB, C(pg_restore) and exact row counts for PostgreSQL, C(DBSIZE)
    for Redis; for a host directory, an extraction into a scratch directory beside the backups whose every
    entry's type, mode, size and sha256 must match the backup's record),
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
    description: Restore only these databases (the PostgreSQL globals and the MariaDB accounts are always applied).
    type: list
    elements: str
    default: []
  age_identity:
    description: age identity (private key) file that decrypts an encrypted backup; overrides the one in O(config).
    type: path
  project_lock:
    description: The project's lock file (the one upgrade and rollback take); held during the restore when set.
    type: path
  source:
    description:
      - Where the backup comes from. V(local) is the host's own backup directory.
      - V(offsite) is the job's off-host repository (the backup role's C(backup_offsite)), for a host that lost its
        local backups or a new one. For O(state=restored) and O(state=verified) the archive is fetched into the
        local backup directory first and verified against its manifest there before anything is touched (a
        backup the directory already holds and that verifies is used as it is). For O(state=drilled) it is
        extracted into a scratch directory, verified, and drilled from there; the metrics record it as the
        off-host drill. In check mode nothing is fetched; the plan names the archive.
    type: str
    choices: [local, offsite]
    default: local
  lock_timeout:
    description:
      - Seconds to wait for O(project_lock) when another operation (an upgrade, a rollback) holds it. When it is
        still held after that, the task fails naming the holder, with C(touched=false).
      - With O(state=verified) and O(project_lock) set, the lock is only waited for and released at once (a
        playbook does this before it stops the writers, so that a held lock stops nothing).
    type: float
    default: 0
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
resumed:
  description: When the previous restore of the component was killed, where it was (backup_id, interrupted_at, done).
  returned: O(state=restored) after a killed restore
  type: dict
touched:
  description: On failure, whether live data may have been changed (false when the restore failed before the swap).
  returned: failure of O(state=restored)
  type: bool
restored:
  description: The artifacts restored.
  returned: O(state=restored)
  type: list
  elements: str
drill:
  description: The drill's report (container, table counts, checksums, matches_source, duration_s).
  returned: O(state=drilled)
  type: dict
fetch:
  description: With O(source=offsite), the archive fetched (C(fetched) false when the local copy was used).
  returned: O(source=offsite)
  type: dict
  sample: {component: mysql, backup_id: 20261122T043947Z, fetched: true, bytes: 913, target: "ssh://opsbook-borg@backup1/./app1"}
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
    wait_for_lock,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.argspec import (
    component_argument_spec,
    component_module_rules,
    job_from_params,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.offsite import fetch, plan_fetch, run_offsite_drill
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
            lock_timeout=dict(type="float", default=0.0),
            source=dict(type="str", choices=["local", "offsite"], default="local"),
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
        if p["source"] == "offsite":
            if module.check_mode or p["state"] == "drilled":
                result["fetch"] = plan_fetch(spec, settings, p["backup_id"])
            else:
                result["fetch"] = fetch(spec, settings, p["backup_id"])
                result["changed"] = bool(result["fetch"]["fetched"])
            if p["state"] == "drilled" and not module.check_mode:
                result["drill"] = run_offsite_drill(spec, settings, result["fetch"]["backup_id"])
                result["backup_id"] = result["fetch"]["backup_id"]
                module.exit_json(**result)
            if module.check_mode and result["fetch"]["fetched"]:
                result.update(changed=True, backup_id=result["fetch"]["backup_id"])
                result["msg"] = "check mode: would fetch %s from %s, verify it and %s it" % (
                    result["fetch"]["backup_id"],
                    result["fetch"]["target"],
                    {"restored": "restore", "verified": "verify", "drilled": "drill"}[p["state"]],
                )
                module.exit_json(**result)
            p["backup_id"] = result["fetch"]["backup_id"]
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
            if p["project_lock"] and not module.check_mode:
                wait_for_lock(p["project_lock"], spec.name, p["lock_timeout"])
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
                spec,
                settings,
                plan["backup_id"],
                databases=p["databases"] or None,
                project_lock=p["project_lock"],
                lock_wait_s=p["lock_timeout"],
            )
            result.update(changed=True, restored=done["restored"], duration_s=done["duration_s"])
            for key in ("resumed",):
                if key in done:
                    result[key] = done[key]
            for warning in done.get("warnings") or []:
                module.warn(warning)
    except BackupError as exc:
        if p["state"] == "restored":
            result["touched"] = bool(exc.evidence.get("touched", False))
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
