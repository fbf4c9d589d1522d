"""The words of a cell's verdicts: the sentences a person reads when a measurement is flagged.

The rules that decide are numbers and stay with them (``stats.own_spread``, ``stats.UNSTABLE_CI``);
each sentence is written once here, so the JSON's ``disturbed``, the reason a cell is measured
again and the lines under the table say one thing in one way. No imports from the package: the
statistics may use it.
"""

from __future__ import annotations


def own_spread_reason(within: float, limit: float) -> str:
    """Why a cell is flagged when its own calls spread too wide (``stats.own_spread`` decides when):
    its within-session half-width ``within`` and the ``limit`` it passed (fractions)."""
    return f"its own calls spread ±{within:.1%} (> {limit:.0%})"
