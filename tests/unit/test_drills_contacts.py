"""The communication drill's contact list (seed 001): every contact in mayday_contacts is reachable on a
channel of mayday_notify_channels that delivered the test message; otherwise the drill fails, naming
the contact. Checked on the shipped inventories too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mayday.drills import hooks, journal, report

REPO = Path(__file__).resolve().parents[2]
CHANNELS = [{"type": "file", "name": "incident-log", "path": "n.jsonl"},
            {"type": "slack", "name": "slack-alerts", "url_env": "X"}]
GOOD = [{"name": "Ana", "role": "incident commander", "channels": ["slack-alerts", "incident-log"]},
        {"name": "Bo", "role": "dba", "channels": ["incident-log"]}]


def test_every_contact_reachable() -> None:
    assert hooks.contact_problems(GOOD, CHANNELS) == []
    assert hooks.contact_problems(GOOD, CHANNELS, {"incident-log": True, "slack-alerts": False}) == []


@pytest.mark.parametrize(("contacts", "delivered", "expected"), [
    (None, None, ["no contact list in the inventory: set mayday_contacts (name, role, channels)"]),
    ([{"name": "Cy", "role": "cto", "channels": ["pager"]}], None,
     ["contact 'Cy': channel(s) pager not in mayday_notify_channels; valid: incident-log, slack-alerts"]),
    ([{"name": "Cy", "role": "cto", "channels": []}], None,
     ["contact 'Cy': no channels; valid: a list of mayday_notify_channels names (incident-log, slack-alerts)"]),
    ([{"name": "Cy", "channels": ["incident-log"]}], None, ["contact 'Cy': no role"]),
    ([{"role": "cto", "channels": ["incident-log"]}], None, ["mayday_contacts[0]: needs a name, a role and channels"]),
    # Known channels, none of them delivered the drill's test message.
    ([{"name": "Ana", "role": "ic", "channels": ["slack-alerts"]}], {"slack-alerts": False, "incident-log": True},
     ["contact 'Ana': unreachable, no channel of theirs delivered the test message (slack-alerts)"]),
])
def test_contact_problems_name_the_contact(contacts: Any, delivered: dict[str, bool] | None,
                                           expected: list[str]) -> None:
    assert hooks.contact_problems(contacts, CHANNELS, delivered) == expected


def test_the_drill_fails_naming_the_contact() -> None:
    problems = hooks.contact_problems([*GOOD, {"name": "Cy", "role": "cto", "channels": ["pager"]}], CHANNELS)
    event = {"event": "notify", "phase": "notify", "ok": True, "rc": 0, "channels": [], "contact_problems": problems,
             "contacts": GOOD}
    facts = journal.facts_of([{"event": "open"}, event])
    verdict, reasons = journal.judge("communication", facts, {})
    assert verdict == "FAILED" and reasons == problems and "'Cy'" in reasons[0]
    assert journal.judge("communication", journal.facts_of([dict(event, contact_problems=[])]), {}) == ("PASSED", [])
    doc = {"drill": "communication", "verdict": verdict, "reasons": reasons, "figures": {}, "sla": {},
           "events": [event], "kind": "communication"}
    text = report.markdown(doc)
    assert "- Ana (incident commander): slack-alerts, incident-log" in text and f"- PROBLEM: {problems[0]}" in text


@pytest.mark.parametrize("inventory", ["lab", "staging", "production"])
def test_shipped_inventories_contacts_reach_their_channels(inventory: str) -> None:
    found: dict[str, Any] = {}
    for path in sorted((REPO / "inventories" / inventory / "group_vars" / "all").glob("*.yml")):
        found.update(yaml.safe_load(path.read_text()) or {})
    assert hooks.contact_problems(found.get("mayday_contacts"), found.get("mayday_notify_channels")) == []
