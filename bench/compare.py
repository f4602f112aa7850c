"""Two bench runs side by side: ``python -m bench.compare A.json B.json``.

For the issue's "run the bench at the default log level too, once, and report the
difference": run ``--log-level INFO --out info.json`` and the default run, then compare.
Rows are matched by scenario, metric and baseline; the Herald figure of each run and
B / A are printed (the baselines moved too if the box was noisy: their own B / A is in the
last column, so a change that is only noise shows up as both moving).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.report import num

Key = tuple[str, str, str]


def _rows(path: Path) -> tuple[dict[str, Any], dict[Key, dict[str, Any]]]:
    document = json.loads(path.read_text())
    rows = {(r["scenario"], r["metric"], r["vs"]): r for r in document["rows"]}
    return document["meta"], rows


def _ratio(a: float | None, b: float | None) -> str:
    return f"{b / a:.2f}x" if a and b is not None else "n/a"


def compare(a_path: Path, b_path: Path) -> str:
    meta_a, rows_a = _rows(a_path)
    meta_b, rows_b = _rows(b_path)
    label_a = f"A: {meta_a.get('log_level', '?')} {meta_a.get('database', '')}".strip()
    label_b = f"B: {meta_b.get('log_level', '?')} {meta_b.get('database', '')}".strip()
    header = ["scenario", "metric", label_a, label_b, "B/A", "baseline B/A"]
    lines = [header]
    for key, a in rows_a.items():
        b = rows_b.get(key)
        if b is None:
            continue
        unit = a.get("unit", "")
        lines.append(
            [
                key[0],
                key[1],
                num(a["herald"], unit),
                num(b["herald"], unit),
                _ratio(a["herald"], b["herald"]),
                _ratio(a["baseline"], b["baseline"]),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args()
    print(compare(args.a, args.b))


if __name__ == "__main__":
    main()
