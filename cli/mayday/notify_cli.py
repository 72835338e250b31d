"""`mayday notify`: test the inventory's notification channels, send pages that came due, list pages."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from mayday import inventory as inv
from mayday import notify, notify_pages
from mayday.errors import BadInput


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | int | float) or value is None:
        return value
    return str(value)


def inventory_channels(path: Path) -> list[dict[str, Any]]:
    """The inventory's channels (mayday_notify_channels, then the security ones, and the fallback
    when it is a channel of its own), templated as a run sees them: vault (ANSIBLE_VAULT_PASSWORD_FILE)
    and environment lookups resolved. Names repeated across the lists count once."""
    from ansible import constants as C
    from ansible.cli import CLI
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import init_plugin_loader
    from ansible.template import Templar
    from ansible.vars.manager import VariableManager

    init_plugin_loader()  # lookups (env, vault, the project's own) as in a run
    loader = DataLoader()
    files = C.DEFAULT_VAULT_PASSWORD_FILE
    password_files = list(files) if isinstance(files, list | tuple) else ([files] if files else [])
    loader.set_vault_secrets(CLI.setup_vault_secrets(loader, vault_ids=list(C.DEFAULT_VAULT_IDENTITY_LIST or []),
                                                     vault_password_files=password_files, ask_vault_pass=False,
                                                     auto_prompt=False))
    manager = InventoryManager(loader=loader, sources=[str(path)])
    variables_of = VariableManager(loader=loader, inventory=manager)
    hosts = manager.get_hosts("all")
    variables = variables_of.get_vars(host=hosts[0] if hosts else None, include_hostvars=False)
    templar = Templar(loader=loader, variables=variables)
    found: dict[str, dict[str, Any]] = {}
    try:
        lists = [_plain(templar.template(variables.get(key) or []))
                 for key in ("mayday_notify_channels", "mayday_notify_channels_security")]
        fallback = _plain(templar.template(variables.get("mayday_notify_fallback") or ""))
    except Exception as exc:  # an undefined variable, a vault without its password
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"the notification channels of {path} cannot be read: {first}") from None
    for value in lists:
        for index, channel in enumerate(value if isinstance(value, list) else []):
            if isinstance(channel, dict):
                found.setdefault(notify.channel_name(channel, index), channel)
    if isinstance(fallback, dict) and fallback.get("type"):
        found.setdefault(str(fallback.get("name") or "fallback"), {**fallback, "name": fallback.get("name")
                                                                    or "fallback"})
    return [{**c, "name": name} for name, c in found.items()]


def _show(entries: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for entry in entries:
        state = "skipped" if entry.get("skipped") else ("ok" if entry["ok"] else "FAILED")
        extra = f", dedup_key {entry['dedup_key']}" if entry.get("dedup_key") else ""
        click.echo(f"{entry['channel']:<20} {entry.get('type') or '?':<10} {state:<8} {entry['detail']}{extra}")


@click.group("notify")
def notify_group() -> None:
    """Notification channels: send a test message, send pages that came due, list pages."""


@notify_group.command("test")
@click.option("--channel", "only", default=None, help="Only this channel (by its name).")
@click.option("-i", "--inventory", "inventory_name", default=None, help="Inventory (default: the lab).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def notify_test(only: str | None, inventory_name: str | None, as_json: bool) -> None:
    """Send a test message to each channel (PagerDuty: a test page opened and resolved at once).

    Exit 0 when every channel delivered, 1 when one did not, 2 for an unknown channel name.
    """
    path = inv.resolve(inventory_name)
    channels = inventory_channels(path)
    names = [c["name"] for c in channels]
    if only is not None and only not in names:
        raise BadInput(f"unknown channel {only!r}; valid: {', '.join(names) or 'none configured in ' + str(path)}")
    chosen = [c for c in channels if only is None or c["name"] == only]
    if not chosen:
        raise BadInput(f"no notification channel in {path} (mayday_notify_channels)")
    entries = notify.test(chosen, str(path))
    _show(entries, as_json)
    sys.exit(0 if all(e["ok"] for e in entries) else 1)


@notify_group.command("flush")
@click.option("-i", "--inventory", "inventory_name", default=None, help="Inventory (default: the lab).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def notify_flush(inventory_name: str | None, as_json: bool) -> None:
    """Send the deferred pages that are due and the resolves still owed (run it from cron or a timer;
    every run and the alert receiver also do it)."""
    entries = notify.flush(inventory_channels(inv.resolve(inventory_name)))
    if not entries and not as_json:
        click.echo("no page due")
    _show(entries, as_json)
    sys.exit(0 if all(e["ok"] for e in entries) else 1)


@notify_group.command("pages")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def notify_pages_list(as_json: bool) -> None:
    """Pages open or waiting (deferred) on this controller, and the last ones closed."""
    found = notify_pages.listing()
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for entry in found["pages"]:
        click.echo(f"{entry['status']:<10} {entry['dedup_key']:<48} {entry['channel']:<16} {entry['group']}")
    if not found["pages"]:
        click.echo("no page open or waiting")
    for entry in found["closed"][-10:]:
        click.echo(f"{entry['status']:<10} {entry['dedup_key']:<48} {entry['channel']:<16} {entry['group']}")
