"""Risk score with reasons: TOML rules compiled once at load, run on every connect event.

    ruleset = load_rules(extra_files, system_dir, resolv_conf)   # raises RulesError (BAD_CONFIG)
    ruleset.score(event)                                        # writes outwatch.score/severity/reasons
    severity_at_least(event, "medium")                          # for --min-severity

The rule format is described in outwatch.rules.loader and docs/rules.md.
"""

from outwatch.rules.engine import SEVERITIES, Rule, RuleSet, Thresholds, severity_at_least
from outwatch.rules.loader import SYSTEM_DIR, RulesError, load_rules

__all__ = [
    "SEVERITIES",
    "SYSTEM_DIR",
    "Rule",
    "RuleSet",
    "RulesError",
    "Thresholds",
    "load_rules",
    "severity_at_least",
]
