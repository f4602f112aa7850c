"""Where workers get the current routing rules from (the file, until rules are versioned)."""

from __future__ import annotations

from pathlib import Path

from router.rules import RoutingRules, load_rules_file


class FileRulesSource:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._rules = load_rules_file(path)

    def current(self) -> RoutingRules:
        return self._rules
