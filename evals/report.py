"""What the HTML report says first: the verdicts as an RST table (both claims, the chains each
side ran), placed in the caption of the verdicts table, which the report opens on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _number(value) -> str:
    return "" if pd.isna(value) else f"{value:.3g}"


def verdicts_rst(path: Path | str) -> str:
    """The verdicts table as an RST grid table, or a sentence saying there are none yet."""
    from tabulate import tabulate

    path = Path(path)
    if not path.exists():
        return "(no verdicts yet: run the sweep first)"
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        table = pd.DataFrame()
    if table.empty or "verdict" not in table:
        return "(no verdicts: no run finished; see the tables' status counts)"
    table = table.fillna(
        {
            "subject_reached": "",
            "peer_reached": "",
            "subject_chain": "",
            "peer_chain": "",
            **({"sampler": ""} if "sampler" in table else {}),
        }
    )
    rows = [
        [
            r.model,
            r.task,
            r.chain,
            getattr(r, "sampler", ""),
            f"{r.subject} ({r.subject_chain})",
            f"{r.peer} ({r.peer_chain})",
            _number(getattr(r, "threshold", float("nan"))),
            _number(r.ratio),
            f"[{_number(r.ratio_low)}, {_number(r.ratio_high)}]" if not pd.isna(r.ratio_low) else "",
            r.verdict,
            _number(r.seconds_ratio),
            r.subject_reached,
            r.peer_reached,
            "yes" if getattr(r, "reward_hacked", False) is True else "no",
        ]
        for r in table.itertuples()
    ]
    headers = [
        "model",
        "task",
        "chain",
        "sampler",
        "subject (ran)",
        "peer (ran)",
        "claim: ratio <=",
        "cost ratio",
        "95% interval",
        "verdict",
        "seconds ratio",
        "subject reached",
        "peer reached",
        "reward hacked",
    ]
    return tabulate(rows, headers=headers, tablefmt="grid")
