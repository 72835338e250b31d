#!/usr/bin/python
# Put a configuration directory back from a copy in one rename, so a failure midway never leaves
# a mix of old and new files live. The logic is in module_utils/mayday_files.py (unit-tested).
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_config_swap
short_description: Replace a configuration directory by a kept copy in one atomic rename
description:
  - Stages a copy of I(copy) as a new sibling of I(live) (C(<live>.mayday-new-<pid>)), checks
    every staged file matching I(validate_glob) with I(validate), then exchanges the staged and
    the live directory with one C(renameat2(RENAME_EXCHANGE)) and renames the replaced directory
    to I(keep_dir). Readers see the whole old directory or the whole new one, never a mix.
  - Symlinks are never followed. Symlinks in the copy are copied as symlinks; a live directory
    that is itself a symlink is refused. A staged file that replaces a live file of the same type
    takes the live file's mode and owner (a C(0640) secret stays C(0640)); new files keep the
    copy's mode and owner; the staged directory takes the live directory's mode and owner.
  - A validation failure removes the staged directory and fails with C(refused=true); the live
    directory is not touched. Any failure before the exchange also leaves the live directory as
    it was and returns C(refused=true).
  - Idempotent. When the copy, with the modes and owners above, already equals the live tree
    (content, type, mode, owner), nothing is staged and C(changed=false).
  - In check mode nothing is written; the difference is computed by reading both trees, and
    matching files of the copy are validated in place (read-only).
options:
  live:
    type: path
    required: true
    description: The live configuration directory. Must be a real directory, not a symlink.
  copy:
    type: path
    required: true
    description: The directory to restore from (for example a copy kept at deploy time).
  validate:
    type: str
    description:
      - Command checking one file, with C(%s) where the file's path goes, for example C(php -l %s).
        Run without a shell. Omit to validate nothing.
  validate_glob:
    type: str
    default: "*.php"
    description: Regular files whose name (or path relative to the copy) matches are validated.
  keep_dir:
    type: path
    description:
      - Where the replaced directory is kept. Must not exist and must be on the same filesystem as
        I(live). Default C(<live>.mayday-replaced-<UTC stamp>) next to I(live).
  keep_last:
    type: int
    default: 10
    description:
      - With the default I(keep_dir), how many C(<live>.mayday-replaced-*) directories stay after a swap;
        older ones are removed (a weekly drill must not fill the disk). C(0) keeps them all.
author: mayday
"""

EXAMPLES = r"""
- name: Rollback | swap the API configuration back in one rename
  mayday_config_swap:
    live: /var/www/app/shared/config
    copy: /var/backups/mayday/api-config/20240101T120000Z-v41
    validate: php -l %s
    validate_glob: "*.php"
  register: api_swap

- name: Rollback | reload php-fpm only when the configuration changed
  ansible.builtin.service:
    name: php8.2-fpm
    state: reloaded
  when: api_swap.changed
"""

RETURN = r"""
changed:
  description: Whether the live directory was (or in check mode would be) replaced.
  type: bool
  returned: always
refused:
  description: True when the run failed and nothing on the host changed (for example a validation failure).
  type: bool
  returned: always
ok:
  description: Whether the live directory ends as requested (replaced, or already equal).
  type: bool
  returned: always
msg: {description: What happened, or why it failed., type: str, returned: always}
summary: {description: One human-readable line., type: str, returned: always}
report:
  description: What was done.
  type: dict
  returned: always
  contains:
    restored_from: {description: The copy restored from., type: str}
    kept_as: {description: Where the replaced directory is kept (null when nothing changed)., type: str}
    files_changed:
      description: Relative paths added, removed, or whose content, type, mode or owner differs (directories end in /).
      type: list
      elements: str
    validated: {description: Relative paths that passed I(validate)., type: list, elements: str}
  sample:
    restored_from: /var/backups/mayday/api-config/20240101T120000Z-v41
    kept_as: /var/www/app/shared/config.mayday-replaced-20240102T030405Z
    files_changed: [api.php]
    validated: [api.php]
steps:
  description: >-
    Every step (check paths, plan, stage, validate, swap, keep) as {step, started, duration_s, result, detail}.
  type: list
  elements: dict
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_files import SwapError, config_swap


def main():
    module = AnsibleModule(
        argument_spec={
            "live": {"type": "path", "required": True},
            "copy": {"type": "path", "required": True},
            "validate": {"type": "str"},
            "validate_glob": {"type": "str", "default": "*.php"},
            "keep_dir": {"type": "path"},
            "keep_last": {"type": "int", "default": 10},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = config_swap(p["live"], p["copy"], validate=p["validate"], validate_glob=p["validate_glob"],
                             keep_dir=p["keep_dir"], check_mode=module.check_mode,
                             keep_last=p["keep_last"])
    except SwapError as exc:
        module.fail_json(**exc.result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
