"""The claims report's writers: ``claims.json`` (the document ``deploy.claims.run`` builds),
``claims.md`` (the verdict table, each claim's parts and reasons, the latency rows) and
``claims.png`` (the ratios with their intervals against the bands), each written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from deploy.core.atomic import write_bytes_atomic, write_json_atomic
from validators.claims import INCONCLUSIVE, REFUTED


def write_claims_json(path: str | Path, doc: dict[str, Any]) -> Path:
    """claims.json: the whole document (numbers, intervals, verdicts, versions, device, seeds)."""
    return write_json_atomic(path, doc)


def _short(text: str, limit: int = 220) -> str:
    text = text.replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _cell(row: dict[str, Any], batch: int) -> str:
    """The ratio with its interval, the A/A band it was judged beside, and the pairs it took."""
    m = row["by_batch"].get(str(batch))
    if m is None:
        return "-"
    text = f"{m['ratio']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
    if m.get("aa_low") is not None:
        margin = m.get("margin", 0.0)
        text += f"<br>A/A [{m['aa_low'] - margin:.3f}, {m['aa_high'] + margin:.3f}]"
    return text + f"<br>{m['pairs']} pairs"


def render_markdown(doc: dict[str, Any]) -> str:
    """claims.md: the verdict table first, then latency, reasons and the run's facts.

    ``doc`` keys used: title, date, device, backend, settings (input_shape, batches),
    claims (ClaimResult dicts), latency_rows (label, by_batch{batch: RatioMeasure dict},
    marks{name: value}), notes (list of str), models (label, params, macs, seconds).
    """
    s = doc["settings"]
    batches = [int(b) for b in s["batches"]]
    shape = "x".join(str(d) for d in s["input_shape"])
    lines = [f"# {doc.get('title', 'Claims')}", "",
             f"Measured {doc['date']} on {doc['device_text']} with {doc['backend']['text']}; input {shape}, "
             f"batches {', '.join(map(str, batches))}{' (quick mode)' if s.get('quick') else ''}. "
             f"Ratios are latency / baseline (median of interleaved rounds, 95 % bootstrap interval), each beside its "
             f"A/A band (the baseline against itself in the same rounds, widened by "
             f"{100 * s.get('aa_margin', 0.01):g} %) and the pairs it took.", "",
             "| # | claim | model | verdict | " + " | ".join(f"ratio b={b}" for b in batches) + " | why |",
             "|---" * (5 + len(batches)) + "|"]
    by_label = {r["label"]: r for r in doc.get("latency_rows", [])}
    for c in doc["claims"]:
        row = by_label.get(c["subject"], {"by_batch": {}})
        cells = " | ".join(_cell(row, b) for b in batches)
        why = c["reason"] if c["verdict"] in (REFUTED, INCONCLUSIVE) else (c.get("summary") or c["reason"])
        lines.append(f"| {c['claim']} | {c['title']} | {c['subject']} | **{c['verdict']}** | {cells} | {_short(why)} |")
    rows = doc.get("latency_rows", [])
    if rows:
        marks = sorted({k for r in rows for k in r.get("marks", {})})
        lines += ["", "## Latency ratio to the baseline", "",
                  "| model | " + " | ".join(f"batch {b}" for b in batches) + "".join(f" | {k}" for k in marks) + " |",
                  "|---" * (1 + len(batches) + len(marks)) + "|"]
        for r in rows:
            extra = "".join(f" | {r['marks'][k]:.3f}" if k in r.get("marks", {}) else " | -" for k in marks)
            lines.append(f"| {r['label']} | " + " | ".join(_cell(r, b) for b in batches) + extra + " |")
    models = doc.get("models", [])
    if models:
        lines += ["", "## Exports", "", "| model | params | MACs (batch 1) | graph check | parity | export s |",
                  "|---|---|---|---|---|---|"]
        for m in models:
            g = m.get("graph") or {}
            params = f"{g['params']:,}" if g.get("params") is not None else "-"
            macs = f"{g['macs']:,}" if g.get("macs") is not None else "-"
            check = "-" if not g else ("ok" if not g.get("reasons") else "flagged")
            parity = {True: "ok", False: "FAILED", None: "-"}[m.get("parity_passed")]
            secs = f"{m['export_seconds']:.0f}" if m.get("export_seconds") is not None else "-"
            label = m["label"] + (f" (skipped: {m['skipped']})" if m.get("skipped") else "")
            lines.append(f"| {label} | {params} | {macs} | {check} | {parity} | {secs} |")
    notes = doc.get("notes", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Every part of every claim", ""]
    for c in doc["claims"]:
        lines.append(f"- **{c['claim']}. {c['subject']}: {c['verdict']}**")
        lines += [f"  - {p['name']} ({p['status']}): {p['detail']}" for p in c["parts"]]
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in doc['versions'].items())}. "
              f"Seeds: {', '.join(f'{k} {v}' for k, v in s['seeds'].items())}. Total {doc['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def write_claims_md(path: str | Path, doc: dict[str, Any]) -> Path:
    return write_bytes_atomic(path, render_markdown(doc).encode())


def write_claims_png(path: str | Path, doc: dict[str, Any]) -> Path:
    """claims.png: one panel per batch, each model's ratio with its interval, the band shaded,
    1.0 marked, and each row's marks (e.g. a MAC-ratio floor, a paper's ratio) as symbols."""
    import matplotlib  # noqa: PLC0415 - optional and slow to import: only the claims plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after choosing the Agg backend above

    rows = doc.get("latency_rows", [])
    batches = [int(b) for b in doc["settings"]["batches"]]
    band = doc["settings"].get("band")
    fig, axes = plt.subplots(1, len(batches), figsize=(5.2 * len(batches), 0.5 * max(len(rows), 3) + 1.8),
                             sharey=True, squeeze=False)
    symbols = ["x", "D", "s", "^"]
    names = sorted({k for r in rows for k in r.get("marks", {})})
    for ax, batch in zip(axes[0], batches):
        if band:
            ax.axvspan(band[0], band[1], color="tab:green", alpha=0.15, label=f"band [{band[0]:g}, {band[1]:g}]")
        ax.axvline(1.0, color="grey", lw=1)
        for y, r in enumerate(rows):
            m = r["by_batch"].get(str(batch))
            if m is not None:
                ax.errorbar(m["ratio"], y, xerr=[[m["ratio"] - m["ci_low"]], [m["ci_high"] - m["ratio"]]],
                            fmt="o", color="tab:blue", capsize=3, label="measured (95 % CI)" if y == 0 else None)
                if m.get("aa_low") is not None:
                    lo, hi = m["aa_low"] - m.get("margin", 0.0), m["aa_high"] + m.get("margin", 0.0)
                    ax.plot([lo, hi], [y + 0.25, y + 0.25], color="grey", lw=3, alpha=0.6,
                            label="A/A band" if y == 0 else None)
            for k, name in enumerate(names):
                if name in r.get("marks", {}):
                    ax.plot(r["marks"][name], y, symbols[k % len(symbols)], color=f"C{k + 1}", ms=7,
                            label=name if not any(name in q.get("marks", {}) for q in rows[:y]) else None)
        ax.set_yticks(range(len(rows)), [r["label"] for r in rows])
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.invert_yaxis()
        ax.set_xlabel("latency ratio to baseline (lower is faster)")
        ax.set_title(f"batch {batch}")
        ax.grid(axis="x", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False)
    fig.suptitle(f"{doc.get('title', 'Claims')} — {doc['date']}, {doc['backend']['text']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())
