# The app's database password where the last credential rotation stored it (the state directory's
# credential store, vault-encrypted or 0600), else the default given: the inventory's own value.
from __future__ import annotations

import os
import sys

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "action"))
import _mayday_path  # noqa: F401

from mayday import secret_store

DOCUMENTATION = r"""
name: mayday_secret
short_description: A credential from the mayday credential store, or a default
description:
  - Reads the store `mayday security rotate` writes (state directory, secrets/<store>.yml) and
    returns the password in force for the credential named (mariadb or postgresql), decrypting a
    vault-encrypted store with the run's vault password.
  - No store, or no entry for the credential, gives I(default) (the inventory's own value).
options:
  _terms: {description: "The credential - mariadb or postgresql.", required: true}
  store: {description: "The store's name (inventory mayday_secrets_store).", required: true}
  default: {description: The value when the store has none.}
"""


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        store = str(kwargs.get("store") or "")
        default = kwargs.get("default")
        vault = getattr(self._loader, "_vault", None)
        values = []
        for term in terms:
            try:
                found = secret_store.lookup(store, str(term), vault)
            except secret_store.StoreError as exc:
                raise AnsibleLookupError(str(exc)) from exc
            values.append(found if found is not None else default)
        return values
