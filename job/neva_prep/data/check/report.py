"""The report people look at: matplotlib plots as PNG files and one self-contained `report.html`.

The page embeds its PNGs as base64 data URLs and carries no script, font or style sheet from elsewhere, so
it opens from object storage, a mail attachment or an air-gapped cluster alike. PNGs are written without a
timestamp, so the same findings give the same files.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from neva_prep import storage

PLOTS = ("tokens.png", "turns.png", "answers.png", "findings.png")
_RED, _BLUE, _GREY = "#c0392b", "#2e86c1", "#7f8c8d"


def _figure(width: float = 7.0, height: float = 3.6) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def tokens_plot(tokens: np.ndarray, seq_length: int) -> bytes:
    fig = _figure()
    ax = fig.add_subplot()
    if tokens.size:
        top = max(int(tokens.max()), seq_length)
        bins = np.linspace(0, top * 1.02 + 1, 60)
        over = tokens > seq_length
        ax.hist(tokens[~over], bins=bins, color=_BLUE, label="fits")
        if over.any():
            ax.hist(tokens[over], bins=bins, color=_RED, label=f"over: {int(over.sum())} truncated")
    ax.axvline(seq_length, color=_RED, linestyle="--", label=f"--seq-length {seq_length}")
    ax.set_xlabel("tokens per record (NeMo's item `tokens`, before truncation)")
    ax.set_ylabel("records")
    ax.set_title("Token length against the sequence length")
    ax.legend(loc="upper right")
    return _png(fig)


def turns_plot(turns: np.ndarray) -> bytes:
    fig = _figure()
    ax = fig.add_subplot()
    if turns.size:
        values, counts = np.unique(turns, return_counts=True)
        ax.bar([str(v) for v in values], counts, color=_BLUE)
    ax.set_xlabel("turns per record (human + gpt)")
    ax.set_ylabel("records")
    ax.set_title("Turns per record")
    return _png(fig)


def answers_plot(answers: np.ndarray) -> bytes:
    fig = _figure()
    ax = fig.add_subplot()
    if answers.size:
        ax.hist(answers, bins=50, color=_BLUE)
    ax.set_xlabel("characters per caption / answer (gpt turn)")
    ax.set_ylabel("turns")
    ax.set_title("Caption and answer lengths")
    return _png(fig)


def findings_plot(by_reason: dict[str, int]) -> bytes:
    fig = _figure(height=max(2.4, 0.45 * len(by_reason) + 1.4))
    ax = fig.add_subplot()
    if by_reason:
        reasons = list(by_reason)[::-1]
        ax.barh(reasons, [by_reason[r] for r in reasons], color=_RED)
    else:
        ax.text(0.5, 0.5, "no findings", ha="center", va="center", fontsize=16, color=_GREY)
        ax.set_yticks([])
    ax.set_xlabel("findings")
    ax.set_title("Findings by reason")
    return _png(fig)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body{font-family:sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
.ok{color:#1e8449}.bad{color:#c0392b}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f2f2f2}img{max-width:100%;border:1px solid #eee;margin:6px 0}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:8px}
"""


def write_report(
    report: str,
    summary: dict[str, Any],
    tokens: np.ndarray,
    turns: np.ndarray,
    answers: np.ndarray,
    worst: list[dict[str, Any]],
    findings: list[dict[str, Any]],
) -> str:
    """Write the four PNGs and `report.html` under `report`; returns the page's URL."""
    opts = summary["options"]
    pngs = dict(
        zip(
            PLOTS,
            (
                tokens_plot(tokens, summary["seq_length"]),
                turns_plot(turns),
                answers_plot(answers),
                findings_plot(summary["findings_by_reason"]),
            ),
            strict=True,
        )
    )
    for name, data in pngs.items():
        storage.write_bytes(storage.join(report, name), data)
    img = {n: "data:image/png;base64," + base64.b64encode(d).decode() for n, d in pngs.items()}
    ok = summary["findings"] == 0
    verdict = (
        '<p class="ok">No findings: every record fits and every check passed.</p>'
        if ok
        else f'<p class="bad">{summary["records_with_findings"]} of {summary["records"]} records have '
        f"findings "
        f"({summary['findings']} in all; {summary['over_seq_length']} over the sequence length).</p>"
    )
    t = summary["tokens"]
    facts = [
        ["input", summary["input"]],
        ["template / media", f"{opts['template']} / {opts['media']}"],
        ["tokenizer", opts["tokenizer"]],
        ["sequence length", summary["seq_length"]],
        ["positions per placeholder", summary["media_positions"]],
        ["records", summary["records"]],
        [
            "token length min / p50 / p90 / p99 / max",
            " / ".join(str(t.get(k, "-")) for k in ("min", "p50", "p90", "p99", "max")),
        ],
        ["media decoded", "yes" if opts["decode"] else "no"],
    ]
    reasons = [[r, n] for r, n in summary["findings_by_reason"].items()]
    longest = [[w["row"], w["id"], w["tokens"], ", ".join(w["reasons"])] for w in worst]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>neva-prep data check</title>
<style>{_STYLE}</style></head><body>
<h1>neva-prep data check</h1>
{verdict}
{_table(["", ""], [[storage.redact(str(k)), storage.redact(str(v))] for k, v in facts])}
<h2>Token length against the sequence length</h2>
<img alt="token lengths" src="{img["tokens.png"]}">
<div class="grid">
<div><h2>Turns per record</h2><img alt="turns per record" src="{img["turns.png"]}"></div>
<div><h2>Caption / answer lengths</h2><img alt="answer lengths" src="{img["answers.png"]}"></div>
</div>
<h2>Findings by reason</h2>
<img alt="findings by reason" src="{img["findings.png"]}">
{_table(["reason", "records"], reasons) if reasons else ""}
<h2>Longest records</h2>
{_table(["row", "id", "tokens", "findings"], longest)}
<h2>Findings (first {len(findings)})</h2>
{_table(["row", "id", "reason", "detail"], [[f["row"], f["id"], f["reason"], f["detail"]] for f in findings])}
</body></html>
"""
    url = storage.join(report, "report.html")
    storage.write_text(url, page)
    return url
