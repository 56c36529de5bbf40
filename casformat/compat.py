"""Version compatibility policies: the optional ``policy`` of a signed channel document and the
client's judgement of a move from one version to another under it.

``policy`` is ``{"rule": RULE, "deprecated": [versions]}`` (a departure from the contract,
docs/http-api.md), signed with the channel document so that a mirror cannot strip or change
it.  Rules:

- ``any``: every move is allowed (the policy only lists deprecated releases);
- ``no-downgrade``: the target must not be older than the installed version;
- ``same-major``: no downgrade, and the target has the installed version's major number
  ("same major, minor >=").

Versions are ordered as PEP 440 versions (``packaging``; ``1.2.0``, ``2.0.0rc1``, ``1.0-beta``);
a version that is not one cannot be ordered, so a rule that needs the order refuses the move.
A deprecated target is never refused, only warned about.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from packaging.version import InvalidVersion, Version

from .errors import DocumentError
from .paths import check_name

RULES = ("any", "no-downgrade", "same-major")
MAX_DEPRECATED = 64
ALLOW_DOWNGRADE, ALLOW_MAJOR = "--allow-downgrade", "--allow-major"


def check_policy(policy: Any) -> dict[str, Any]:
    """Structure of a channel document's ``policy``."""
    if not isinstance(policy, dict) or set(policy) != {"rule", "deprecated"}:
        raise DocumentError("policy must be {rule, deprecated}")
    if policy["rule"] not in RULES:
        raise DocumentError(f"policy rule must be one of {', '.join(RULES)}")
    deprecated = policy["deprecated"]
    if not isinstance(deprecated, list) or len(deprecated) > MAX_DEPRECATED:
        raise DocumentError(f"policy deprecated must be a list of at most {MAX_DEPRECATED} versions")
    for version in deprecated:
        check_name("version", version)
    return policy


def parse_version(text: str) -> Version | None:
    """``text`` as an orderable version, or None."""
    try:
        return Version(text)
    except InvalidVersion:
        return None


@dataclass(frozen=True)
class Verdict:
    """A move under a policy: refused (``refusal``, the rule broken and the override) or allowed,
    with warnings."""

    refusal: str | None = None
    override: str | None = None          # the flag that overrides the refusal
    rule: str | None = None
    warnings: list[str] = field(default_factory=list)


def judge(policy: dict[str, Any] | None, current: str | None, target: str,
          allow_downgrade: bool = False, allow_major: bool = False) -> Verdict:
    """May a client on ``current`` (None: nothing installed) move to ``target`` under ``policy``?"""
    if policy is None:
        return Verdict()
    rule = policy["rule"]
    warnings = [f"{target} is deprecated by the operator"] if target in policy["deprecated"] else []
    if current is None or current == target or rule == "any":
        return Verdict(rule=rule, warnings=warnings)
    old, new = parse_version(current), parse_version(target)
    if old is None or new is None:
        if allow_downgrade:
            return Verdict(rule=rule, warnings=[*warnings, f"{current} -> {target} cannot be ordered; allowed "
                                                f"by {ALLOW_DOWNGRADE}"])
        bad = current if old is None else target
        return Verdict(f"rule {rule!r} needs ordered versions and {bad!r} is not one (like 1.2.0)",
                       ALLOW_DOWNGRADE, rule, warnings)
    if new < old:
        if not allow_downgrade:
            return Verdict(f"rule {rule!r}: {target} is older than the installed {current} (a downgrade)",
                           ALLOW_DOWNGRADE, rule, warnings)
        warnings.append(f"downgrading {current} -> {target} ({ALLOW_DOWNGRADE})")
    if rule == "same-major" and new.major != old.major:
        if not allow_major:
            return Verdict(f"rule {rule!r}: {target} has another major version than the installed {current}",
                           ALLOW_MAJOR, rule, warnings)
        warnings.append(f"changing major version {current} -> {target} ({ALLOW_MAJOR})")
    return Verdict(rule=rule, warnings=warnings)
