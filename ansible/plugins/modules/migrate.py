#!/usr/bin/python
# Copyright: the migrate authors
# SPDX-License-Identifier: Apache-2.0
"""Runs migrate on the managed host and returns its report."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: migrate
short_description: Migrate a host to a new release with migrate, and return the report
version_added: "0.1.0"
description:
  - Runs C(migrate COMMAND --output json) on the managed host and returns
    the run's C(report.json) as structured results, plus the migration's
    state from C(migrate status).
  - C(changed) is true only when the run changed the root (a C(sync),
    C(run), C(rollback) or C(cleanup) that recorded a new report).
  - Exit code 3 (a check found an inhibitor, nothing was changed) fails the
    task with the inhibitors listed and C(changed=false); any other failure
    names the failing step and its message.
  - In check mode the module runs C(migrate check) whatever I(command) says
    (and C(migrate status) for I(command=status)).
options:
  command:
    description:
      - What to run. C(check) changes nothing; C(sync) runs the checks and
        the pre-copies; C(run) migrates (checks, sync, cutover); C(status)
        only reads; C(rollback) returns to the safety backup; C(cleanup) is
        the first-boot check that C(migrate-cleanup.service) runs.
    type: str
    choices: [check, sync, run, status, rollback, cleanup]
    default: check
  image:
    description: The migration image (C(--image)); default the host configuration's or the unfinished migration's.
    type: str
  plan:
    description: A plan file on the managed host replacing the image's plan (C(--plan)).
    type: path
  root:
    description: The root to migrate; C(/) is the running host.
    type: path
    default: /
  reboot:
    description:
      - With I(command=run), reboot into the new release through logind once
        the migration finished (C(--reboot)); also reboots a finished
        migration that waits for its reboot. The connection drops, so run
        the task with C(async) and C(poll=0) and wait for the host afterwards.
    type: bool
    default: false
  force_new:
    description: Start a new migration even if the last one was rolled back or finished (C(--force-new)).
    type: bool
    default: false
  executable:
    description: The migrate program.
    type: path
    default: migrate
notes:
  - The managed host needs migrate installed (its .deb or .rpm) and podman.
  - Supports check mode.
author:
  - migrate authors
"""

EXAMPLES = r"""
- name: Check whether the host can migrate
  migrate.fleet.migrate:
    command: check
  register: migrate_check
  failed_when: false

- name: Migrate the host (the reboot is a separate task)
  migrate.fleet.migrate:
    command: run
    image: registry.example/migrate/debian-13:stable

- name: Reboot into the new release
  migrate.fleet.migrate:
    command: run
    reboot: true
  async: 120
  poll: 0

- name: Where the migration stands
  migrate.fleet.migrate:
    command: status
  register: migrate_status
"""

RETURN = r"""
rc:
  description: migrate's exit code (0 done, 1 a step failed, 2 bad input, 3 inhibited, 4 environment).
  returned: always
  type: int
report:
  description: The run's report (docs/report.md of migrate), or the last run's for C(status).
  returned: when the run wrote one, or printed one (check)
  type: dict
migration:
  description: The state journal of the migration on the root, as C(migrate status --output json) shows it.
  returned: when the root has a migration
  type: dict
state:
  description: Where the migration stands (C(syncing), C(completed), C(confirmed), C(failed_after_reboot), C(rolled_back), ...).
  returned: when the root has a migration
  type: str
  sample: confirmed
inhibitors:
  description: The inhibitors a check found (id, message, hint).
  returned: when rc is 3
  type: list
  elements: dict
failed_step:
  description: The first step that failed, with its message.
  returned: when a step failed
  type: dict
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

CHANGING = ("sync", "run", "rollback", "cleanup")
REPORT = "var/log/migrate/report.json"


def read_report(root):
    """The root's last report, or None."""
    path = os.path.join(root, REPORT)
    try:
        with open(path, "rb") as f:
            return json.loads(f.read(16 * 1024 * 1024))
    except (OSError, ValueError):
        return None


def status(module, root):
    """migrate status --output json, or an empty dict."""
    rc, out, _err = module.run_command(
        [module.params["executable"], "status", "--root", root, "--output", "json"]
    )
    if rc != 0:
        return {}
    try:
        return json.loads(out)
    except ValueError:
        return {}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            command=dict(
                type="str",
                default="check",
                choices=["check", "sync", "run", "status", "rollback", "cleanup"],
            ),
            image=dict(type="str"),
            plan=dict(type="path"),
            root=dict(type="path", default="/"),
            reboot=dict(type="bool", default=False),
            force_new=dict(type="bool", default=False),
            executable=dict(type="path", default="migrate"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    root = p["root"]
    command = p["command"]
    if module.check_mode and command != "status":
        command = "check"
    if p["reboot"] and command != "run":
        module.fail_json(msg="reboot applies to command=run only")
    result = dict(changed=False, rc=0)

    if command == "status":
        current = status(module, root)
        result["report"] = current.get("last_run")
        migration = current.get("migration")
        if migration:
            result["migration"] = migration
            result["state"] = migration.get("state")
        module.exit_json(**result)

    before = (read_report(root) or {}).get("run_id")
    argv = [p["executable"], command, "--root", root, "--output", "json"]
    if p["image"] and command in ("check", "sync", "run"):
        argv += ["--image", p["image"]]
    if p["plan"] and command in ("check", "sync", "run"):
        argv += ["--plan", p["plan"]]
    if p["reboot"]:
        argv.append("--reboot")
    if p["force_new"]:
        argv.append("--force-new")
    rc, out, err = module.run_command(argv)
    result["rc"] = rc
    report = None
    if command == "check":
        # A check leaves the root as it was: its report is what it printed.
        for line in reversed(out.splitlines()):
            try:
                report = json.loads(line)
                break
            except ValueError:
                continue
    else:
        written = read_report(root)
        if written and written.get("run_id") != before:
            report = written
    if report is not None:
        result["report"] = report
    current = status(module, root)
    migration = current.get("migration")
    if migration:
        result["migration"] = migration
        result["state"] = migration.get("state")
    result["changed"] = bool(
        command in CHANGING and report is not None and not module.check_mode and rc in (0, 1)
    )

    if rc == 3:
        findings = (report or {}).get("findings", [])
        result["inhibitors"] = [
            {"id": f.get("id"), "message": f.get("message"), "hint": f.get("hint")}
            for f in findings
            if f.get("severity") == "inhibitor"
        ]
        result["changed"] = False
        module.fail_json(
            msg="inhibited, nothing was changed: "
            + "; ".join(i["message"] or "" for i in result["inhibitors"]),
            **result
        )
    if rc != 0:
        steps = (report or {}).get("steps", [])
        failed = [s for s in steps if s.get("status") == "failed"]
        if failed:
            result["failed_step"] = {"id": failed[0].get("id"), "message": failed[0].get("message")}
        message = (report or {}).get("message") or err.strip().splitlines()[-1:] or ["migrate failed"]
        if isinstance(message, list):
            message = message[0]
        module.fail_json(msg=message, stderr=err, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
