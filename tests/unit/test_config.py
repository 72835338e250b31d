"""playbooks/ansible.cfg (runs from inside playbooks/) says what ../ansible.cfg says, paths one level up."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATH_KEYS = {"inventory", "roles_path", "library", "module_utils", "action_plugins", "lookup_plugins",
             "callback_plugins"}


def read(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(path)
    return parser


def test_both_configs_agree() -> None:
    top, inner = read(ROOT / "ansible.cfg"), read(ROOT / "playbooks" / "ansible.cfg")
    assert top.sections() == inner.sections()
    for section in top.sections():
        assert set(top[section]) == set(inner[section]), section
        for key, value in top[section].items():
            want = f"../{value}" if key in PATH_KEYS else value
            assert inner[section][key] == want, (section, key)
            if key in PATH_KEYS:
                assert (ROOT / "playbooks" / want).exists(), want
