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
attributes:
  check_mode:
    support: full
    details: Check mode verifies the checksums and returns the plan of the restore; it restores nothing.
  diff_mode:
    support: none
  idempotent:
    support: none
    details: A restore always reports a change; O(state=verified) and O(state=drilled) never change the target.
options:
  component:
    description: Name of the backup job (the directory under O(dest)).
    type: str
    required: true
  config:
    description:
      - The JSON job file the C(backup) role writes (for example C(/etc/opsbook/backup/<component>.json)); the
        component's type, container, destination and encryption settings come from it. Mutually exclusive with
        O(type).
    type: path
  type:
    description: What the backup holds. Required unless O(config) is given.
    type: str
    choices: [mariadb, mysql, postgres, redis, prometheus, volume]
  container:
    description: The container to restore into (required unless O(type=volume)).
    type: str
  volume:
    description: The Docker volume to restore into (O(type=volume)).
    type: str
  api_port:
    description: O(type=prometheus) only. Port of Prometheus's HTTP API in the container, polled until it is ready.
    type: int
    default: 9090
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
  user:
    description: Database user; defaults as in M(opsbook.stack.backup).
    type: str
    default: ""
  password:
    description: Database password; defaults to the password in the container's environment.
    type: str
    default: ""
  dest:
    description: Backup root directory.
    type: path
    default: /var/backups/opsbook
  metrics_dir:
    description: node_exporter textfile collector directory for the drill metrics; empty writes none.
    type: path
    default: ""
  helper_image:
    description: Image for the helper container that mounts O(volume).
    type: str
    default: ""
  drill_prefix:
    description: Name prefix of the throwaway drill containers.
    type: str
    default: opsbook-drill-
  age_identity:
    description: age identity (private key) file that decrypts an encrypted backup; overrides the one in O(config).
    type: path
  project_lock:
    description: The project's lock file (the one upgrade and rollback take); held during the restore when set.
    type: path
  docker_host:
    description: Docker Engine API address.
    type: str
    default: unix:///var/run/docker.sock
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

from ansible_collections.opsbook.stack.plugins.module_utils._backup import (
    BackupError,
    ComponentSpec,
    Settings,
    load_config,
    plan_restore,
    run_drill,
    run_restore,
)
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerError


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            component=dict(type="str", required=True),
            config=dict(type="path"),
            type=dict(type="str", choices=["mariadb", "mysql", "postgres", "redis", "prometheus", "volume"]),
            container=dict(type="str"),
            volume=dict(type="str"),
            api_port=dict(type="int", default=9090),
            backup_id=dict(type="str", default="latest"),
            state=dict(type="str", choices=["restored", "drilled", "verified"], default="restored"),
            databases=dict(type="list", elements="str", default=[]),
            user=dict(type="str", default=""),
            password=dict(type="str", default="", no_log=True),
            dest=dict(type="path", default="/var/backups/opsbook"),
            metrics_dir=dict(type="path", default=""),
            helper_image=dict(type="str", default=""),
            drill_prefix=dict(type="str", default="opsbook-drill-"),
            age_identity=dict(type="path"),
            project_lock=dict(type="path"),
            docker_host=dict(type="str", default="unix:///var/run/docker.sock"),
        ),
        required_if=[
            ("type", "volume", ["volume"]),
            ("type", "mariadb", ["container"]),
            ("type", "mysql", ["container"]),
            ("type", "postgres", ["container"]),
            ("type", "redis", ["container"]),
            ("type", "prometheus", ["container"]),
        ],
        required_one_of=[("config", "type")],
        mutually_exclusive=[("config", "type"), ("config", "container"), ("config", "volume")],
        supports_check_mode=True,
    )
    p = module.params
    result: dict = {"changed": False}
    try:
        if p["config"]:
            settings, components = load_config(p["config"])
            if p["component"] not in components:
                raise BackupError(
                    2,
                    "component %s is not in %s (have: %s)"
                    % (p["component"], p["config"], ", ".join(sorted(components)) or "none"),
                )
            spec = components[p["component"]]
        else:
            spec = ComponentSpec(
                name=p["component"],
                type=p["type"],
                container=p["container"] or "",
                volume=p["volume"] or "",
                user=p["user"],
                password=p["password"],
                helper_image=p["helper_image"],
                api_port=p["api_port"],
            )
            settings = Settings(
                dest=p["dest"],
                metrics_dir=p["metrics_dir"],
                docker_host=p["docker_host"],
                drill_prefix=p["drill_prefix"],
            )
        if p["age_identity"]:
            settings.age_identity = p["age_identity"]
        plan = plan_restore(spec, settings, p["backup_id"])
        result.update(plan=plan, backup_id=plan["backup_id"])
        if not plan["verified"]:
            module.fail_json(
                msg="backup %s of %s fails verification, refusing to use it: %s"
                % (plan["backup_id"], spec.name, "; ".join(plan["problems"])),
                failure_class="verify_failed",
                exit_code=9,
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
            msg="restore of %s failed: %s" % (p["component"], exc), failure_class="docker", exit_code=4, **result
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
