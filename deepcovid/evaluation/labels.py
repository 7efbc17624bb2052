"""Names of the classes and image groups, shared by the plot tables and the figures."""

from __future__ import annotations

CLASS_NAMES = {1: "COVID-19", 0: "non-COVID"}
#: Score-histogram groups in display order (paper Figs. 6-9), with their labels.
GROUPS = ("covid", "normal", "other-disease")
GROUP_LABELS = {"covid": "COVID-19", "normal": "Normal", "other-disease": "Other disease", "non-covid": "Non-COVID"}


def group_order(groups) -> list[str]:
    """The standard groups first (all three, or covid / non-covid when derived from labels), then others."""
    present = set(groups)
    base = ["covid", "non-covid"] if "non-covid" in present else list(GROUPS)
    return base + sorted(present - set(base))


def column_name(group: str) -> str:
    return str(group).replace("-", "_").replace(" ", "_")
