"""The credential store: the secrets `mayday security rotate` generated, where the next run finds them.

One file per inventory (`mayday_secrets_store`) under the state directory's secrets/: ansible-vault
encrypted when the run has a vault password, else plain YAML readable by its owner only (0600). It
holds, per credential (mariadb, postgresql), the password in force and the one before it (the undo).
"""

from __future__ import annotations

import os
import re
import secrets
import string
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from mayday.paths import state_dir

VAULT_HEADER = "$ANSIBLE_VAULT"
STORE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Letters and digits only: safe unquoted in db.ini, pgbouncer's auth file, SQL literals and conninfo.
ALPHABET = string.ascii_letters + string.digits
LENGTH = 32


class StoreError(Exception):
    pass


def store_path(name: str) -> Path:
    if not STORE_NAME.match(name or ""):
        raise StoreError(f"credential store {name!r} is not a valid name; valid: letters, digits, '_', '.', '-'")
    return state_dir() / "secrets" / f"{name}.yml"


def new_secret() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def read(name: str, vault: Any = None) -> dict[str, Any]:
    """The store's content ({} when there is none); `vault` is an ansible VaultLib for encrypted ones."""
    path = store_path(name)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    if raw.lstrip().startswith(VAULT_HEADER.encode()):
        if vault is None or not getattr(vault, "secrets", None):
            raise StoreError(f"{path} is vault-encrypted and this run has no vault password")
        raw = vault.decrypt(raw)
    doc = yaml.safe_load(raw.decode()) or {}
    if not isinstance(doc, dict):
        raise StoreError(f"{path} is not a credential store (a mapping)")
    return doc


def write(name: str, doc: dict[str, Any], vault: Any = None) -> dict[str, Any]:
    """Writes the store atomically, mode 0600; encrypted when `vault` has a secret. Says where and how."""
    path = store_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    text = "# mayday credential store: written by `mayday security rotate`; never edit while a run is on.\n"
    text += yaml.safe_dump(doc, default_flow_style=False, sort_keys=True)
    encrypted = bool(vault is not None and getattr(vault, "secrets", None))
    data = vault.encrypt(text) if encrypted else text.encode()
    fd, tmp = tempfile.mkstemp(prefix=".store-", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"path": str(path), "kind": "ansible-vault" if encrypted else "file-0600"}


def rotate(name: str, current: dict[str, str], targets: list[str], vault: Any = None,
           check: bool = False) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """New secrets for `targets` (credential names), stored before any host changes, so a run cut
    short leaves the store ahead of the hosts (roll forward: run again), never behind them.
    Returns ({credential: {old, new}} for every credential in `current`, where-stored)."""
    doc = read(name, vault)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    pairs: dict[str, dict[str, str]] = {}
    for cred, old in current.items():
        new = new_secret() if cred in targets else old
        pairs[cred] = {"old": old, "new": new}
        if cred in targets:
            doc[cred] = {"password": new, "previous": old, "rotated_at": now}
    where = {"path": str(store_path(name)), "kind": "none (check mode)"}
    if not check and targets:
        where = write(name, doc, vault)
    return pairs, where


def revert(name: str, creds: list[str], vault: Any = None) -> dict[str, Any]:
    """Puts the previous password back in the store for `creds` (their database refused the new one)."""
    doc = read(name, vault)
    for cred in creds:
        entry = doc.get(cred) or {}
        if "previous" in entry:
            doc[cred] = {"password": entry["previous"], "previous": entry["previous"],
                         "rotated_at": entry.get("rotated_at", "")}
    return write(name, doc, vault)


def lookup(name: str, cred: str, vault: Any = None) -> str | None:
    entry = read(name, vault).get(cred) or {}
    value = entry.get("password") if isinstance(entry, dict) else None
    return str(value) if value else None
