# Controller side of a credential rotation: new secrets (python secrets), stored before any host
# changes; or the previous ones put back for a database that refused the new one. Run with no_log:
# the result carries the passwords, for the tasks that apply and prove them.
from __future__ import annotations

import _mayday_path  # noqa: F401
from ansible.plugins.action import ActionBase

from mayday import secret_store

CREDENTIALS = ("mariadb", "postgresql")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        store = str(args.get("store") or "")
        vault = getattr(self._loader, "_vault", None)
        try:
            if args.get("state", "rotate") == "revert":
                creds = [c for c in args.get("credentials") or [] if c in CREDENTIALS]
                where = secret_store.revert(store, creds, vault) if creds and not self._task.check_mode else {}
                result.update(changed=bool(creds), store=where, reverted=creds)
                return result
            current = {c: str((args.get("current") or {}).get(c) or "") for c in CREDENTIALS}
            targets = [c for c in args.get("targets") or [] if c in CREDENTIALS]
            pairs, where = secret_store.rotate(store, current, targets, vault, check=bool(self._task.check_mode))
        except (secret_store.StoreError, OSError) as exc:
            result.update(failed=True, msg=f"credential store: {exc}")
            return result
        result.update(changed=bool(targets), credentials=pairs, store=where, rotated=targets)
        return result
