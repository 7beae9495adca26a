"""robustness.html: the sync-robustness curves (`lipsync eval-sync-robustness`) as one self-contained page.

The page style, plot width, margins and colours are the evaluation report's (`lipsync.eval.html`). Its
`line_plot` draws per-frame values against seconds; these curves need a value axis (shift, scale, angle,
offset) and a ±std band, drawn here with the same look.
"""

from __future__ import annotations

import html

from lipsync.eval.html import COLOURS, LEGEND_CHAR_WIDTH, PLOT_MARGIN, PLOT_WIDTH, STYLE
from lipsync.eval.sync_robustness import ExpertResult, RobustnessReport
from lipsync.eval.sync_robustness_settings import AXIS_LABELS, IDENTITY, TRANSFORMS, Transform

BAND_PLOT_HEIGHT = 260  # px: taller than the per-frame plots, the band needs room
BAND_OPACITY = 0.15
Y_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)  # similarities are sync probabilities in [0, 1]
MAX_X_TICKS = 16  # above this many values, every n-th is labelled
TOP = 10  # px above the plot area
LEGEND_ROW = 16  # px under the x labels for the legend


def band_plot(experts: list[ExpertResult], transform: Transform, identity: float) -> str:
    """An SVG plot of mean similarity against the transform's value, a ±std band and a line per expert;
    a dashed line marks the identity value (the untransformed windows)."""
    values = sorted({p.value for e in experts for p in e.curves[transform]})
    inner_w = PLOT_WIDTH - PLOT_MARGIN - 20
    inner_h = BAND_PLOT_HEIGHT - PLOT_MARGIN - TOP
    low, high = (values[0], values[-1]) if values else (0.0, 1.0)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5

    def x(value: float) -> float:
        return PLOT_MARGIN + inner_w * (value - low) / (high - low)

    def y(similarity: float) -> float:
        return TOP + inner_h * (1.0 - min(max(similarity, 0.0), 1.0))

    parts = [f'<svg width="{PLOT_WIDTH}" height="{BAND_PLOT_HEIGHT}" xmlns="http://www.w3.org/2000/svg">']
    for tick in Y_TICKS:
        parts.append(
            f'<line x1="{PLOT_MARGIN}" y1="{y(tick):.1f}" x2="{PLOT_MARGIN + inner_w}" y2="{y(tick):.1f}" '
            'stroke="#eee"/>'
        )
        parts.append(f'<text x="{PLOT_MARGIN - 4}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    every = max(1, -(-len(values) // MAX_X_TICKS))
    for index, value in enumerate(values):
        if index % every == 0 or value == identity:
            parts.append(
                f'<text x="{x(value):.1f}" y="{TOP + inner_h + 16}" text-anchor="middle">{value:g}</text>'
            )
    if low <= identity <= high:
        parts.append(
            f'<line x1="{x(identity):.1f}" y1="{TOP}" x2="{x(identity):.1f}" y2="{TOP + inner_h}" '
            'stroke="#999" stroke-dasharray="4 3"/>'
        )
    for number, expert in enumerate(experts):
        colour = COLOURS[number % len(COLOURS)]
        curve = expert.curves[transform]
        upper = [f"{x(p.value):.1f},{y(p.mean + p.std):.1f}" for p in curve]
        lower = [f"{x(p.value):.1f},{y(p.mean - p.std):.1f}" for p in reversed(curve)]
        parts.append(
            f'<polygon points="{" ".join(upper + lower)}" fill="{colour}" fill-opacity="{BAND_OPACITY}"/>'
        )
        line = " ".join(f"{x(p.value):.1f},{y(p.mean):.1f}" for p in curve)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        parts.extend(
            f'<circle cx="{x(p.value):.1f}" cy="{y(p.mean):.1f}" r="2.5" fill="{colour}">'
            f"<title>{html.escape(expert.name)}: {p.value:g} → {p.mean:.3f} ± {p.std:.3f} (n = {p.count})"
            "</title></circle>"
            for p in curve
        )
    legend_x = PLOT_MARGIN + 8
    legend_y = TOP + inner_h + 16 + LEGEND_ROW
    for number, expert in enumerate(experts):
        label = _label(expert)
        colour = COLOURS[number % len(COLOURS)]
        parts.append(f'<rect x="{legend_x}" y="{legend_y - 9}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{legend_x + 14}" y="{legend_y}">{html.escape(label)}</text>')
        legend_x += LEGEND_CHAR_WIDTH * len(label) + 40
    parts.append(
        f'<text x="{PLOT_MARGIN + inner_w / 2:.1f}" y="{legend_y + LEGEND_ROW + 4}" text-anchor="middle">'
        f"{html.escape(AXIS_LABELS[transform])}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _label(expert: ExpertResult) -> str:
    return expert.name + (" (UNTRAINED)" if expert.untrained else "")


def _table(report: RobustnessReport, transform: Transform) -> str:
    head = "".join(f"<th>{html.escape(_label(e))}</th>" for e in report.experts)
    rows = [f"<details><summary>numbers</summary><table><tr><th>{html.escape(transform)}</th>{head}</tr>"]
    for value in report.transforms[transform]["values"]:
        cells = []
        for expert in report.experts:
            point = next((p for p in expert.curves[transform] if p.value == value), None)
            cell = f"{point.mean:.3f} ± {point.std:.3f}" if point else "-"
            cells.append(f"<td class='value'>{cell}</td>")
        rows.append(f"<tr><td class='value'>{value:g}</td>{''.join(cells)}</tr>")
    rows.append("</table></details>")
    return "".join(rows)


def render_robustness_html(report: RobustnessReport) -> str:
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>lipsync sync-expert robustness</title>"]
    out.append(f"<style>{STYLE}</style></head><body><h1>Sync-expert robustness</h1>")
    untrained = [e.name for e in report.experts if e.untrained]
    if untrained:
        out.append(
            f"<p class='banner'>{html.escape(', '.join(untrained))}: UNTRAINED (randomly initialised) "
            "weights. Their curves show that the analysis runs, not how robust a trained expert is.</p>"
        )
    out.append(
        "<p>The similarity each sync expert gives 5-frame windows (its own window length) of faces and "
        "their own audio: clamp(cos, 0, 1) of its two embeddings, the sync probability (AVSIM for "
        "AVSyncNet), as the stabilized-sync paper's Fig. 6 plots it. Lines: mean over the windows; "
        "bands: ± one standard deviation; dashed: the untransformed windows.</p>"
    )
    out.append(
        "<table><tr><th>expert</th><th>kind</th><th>frames</th><th>checkpoint</th><th>weights</th></tr>"
    )
    for expert in report.experts:
        status = "UNTRAINED" if expert.untrained else "not marked untrained"
        if expert.note:
            status += f"; {expert.note}"
        out.append(
            f"<tr><td>{html.escape(expert.name)}</td><td>{html.escape(expert.kind)}</td>"
            f"<td>{expert.frames}</td><td><code>{html.escape(expert.checkpoint)}</code></td>"
            f"<td>{html.escape(status)}</td></tr>"
        )
    out.append("</table>")
    out.append(
        f"<p>Data: <code>{html.escape(report.data)}</code>, {html.escape(report.split)}: "
        f"{len(report.clips)} clip(s), {report.windows} window(s) per value "
        f"({html.escape(', '.join(c['clip_id'] for c in report.clips))}).</p>"
    )
    for transform in TRANSFORMS:
        identity = IDENTITY[transform]
        out.append(f"<h2>{html.escape(transform)}</h2>")
        plot = band_plot(report.experts, transform, identity)
        caption = f"Mean similarity ± std against {AXIS_LABELS[transform]}; "
        caption += f"{identity:g} is the untransformed input."
        out.append(f"<figure>{plot}<figcaption>{html.escape(caption)}</figcaption></figure>")
        out.append(_table(report, transform))
    out.append(
        f"<p><small>lipsync {html.escape(report.lipsync_version)}, {html.escape(report.created)}, "
        f"{report.seconds:.1f} s</small></p></body></html>"
    )
    return "\n".join(out)
