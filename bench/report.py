"""Result rows, the printed table and the JSON file.

Each row holds a Herald figure and the baseline measured in the same run; the ratio is
always herald / baseline, and the target says which way is good. A target is reported
(``met`` yes/no), never asserted.
"""

from __future__ import annotations

import json
import operator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_OPS = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True, slots=True)
class Target:
    """``subject`` is ``ratio`` or ``herald``: e.g. ratio >= 0.8, or herald <= 50 (ms).

    ``value`` is what ``met`` checks (the issue's floor where it gives one); ``goal``, the
    issue's stretch figure, is only printed beside it. ``subject="note"`` prints ``note``
    and is never met or missed: a floor relative to a figure this run did not measure.
    """

    subject: str
    op: str
    value: float
    unit: str = ""
    goal: float | None = None
    note: str = ""

    def __str__(self) -> str:
        if self.subject == "note":
            return self.note
        goal = f" (goal {self.goal:g})" if self.goal is not None else ""
        if self.subject == "ratio":
            return f"ratio {self.op} {self.value:g}{goal}"
        return f"{self.op} {self.value:g} {self.unit}".strip() + goal

    def met(self, herald: float | None, ratio: float | None) -> bool | None:
        if self.subject == "note":
            return None
        value = ratio if self.subject == "ratio" else herald
        return None if value is None else _OPS[self.op](value, self.value)


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    metric: str
    herald: float | None
    baseline: float | None
    vs: str  # what the baseline is
    unit: str = ""
    target: Target | None = None

    @property
    def ratio(self) -> float | None:
        if self.herald is None or not self.baseline:
            return None
        return self.herald / self.baseline

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.herald, self.ratio)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["target"] = str(self.target) if self.target else None
        out["ratio"] = self.ratio
        out["met"] = self.met
        return out


def num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if value else "0"
    return f"{text} {unit}".rstrip()


def table(rows: list[Row]) -> str:
    header = ["scenario", "metric", "herald", "baseline", "vs", "ratio", "target", "met"]
    cells = [
        [
            row.scenario,
            row.metric,
            num(row.herald, row.unit),
            num(row.baseline, row.unit),
            row.vs,
            f"{row.ratio:.2f}x" if row.ratio is not None else "n/a",
            str(row.target) if row.target else "-",
            {True: "yes", False: "NO", None: "-"}[row.met],
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    right = {2, 3, 5}

    def render(line: list[str]) -> str:
        return " | ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([render(header), rule, *(render(line) for line in cells)])


def write_json(path: Path, meta: dict[str, Any], rows: list[Row], details: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta, "rows": [r.as_dict() for r in rows], "details": details}
    path.write_text(json.dumps(document, indent=2, default=str))
