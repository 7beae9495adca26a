"""report.html: one self-contained page (inline SVG plots, embedded JPEG thumbnails, no external URLs)."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lipsync.eval.definitions import BETTER_ARROWS
from lipsync.eval.report import EvalReport, Metric

PLOT_WIDTH = 900  # px
PLOT_HEIGHT = 180  # px
PLOT_MARGIN = 70  # px, left and bottom, for the axes' labels
GRID_SECONDS = 1.0  # a vertical grid line every second
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
ENVELOPE_COLOUR = "#bbbbbb"
LEGEND_CHAR_WIDTH = 6  # px per character of an 11 px label
LEGEND_CHAR_WIDTH = 6  # px per character of an 11 px label

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1000px; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
td.value { font-variant-numeric: tabular-nums; white-space: nowrap; }
td.definition { font-size: 0.85em; color: #555; }
.banner { background: #fdd; border: 1px solid #c00; padding: 0.7em; font-weight: bold; }
.skipped { color: #888; }
figure { margin: 1em 0; }
figcaption { font-size: 0.9em; color: #444; }
.thumbs img { display: block; margin: 0.3em 0; max-width: 100%; }
svg text { font-size: 11px; fill: #444; }
"""


@dataclass(frozen=True)
class Thumbnail:
    frame: int
    seconds: float
    jpeg: bytes  # reference and generated side by side (frame, then face crop)
    has_reference: bool


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float | None]
    colour: str


def line_plot(series: Sequence[Series], fps: int, envelope: Sequence[float | None] = ()) -> str:
    """An SVG line plot of per-frame values against time; `envelope` (the audio RMS) is drawn shaded
    behind, on its own scale."""
    frames = max([len(s.values) for s in series] + [len(envelope), 1])
    finite = [v for s in series for v in s.values if v is not None and math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    inner_w, inner_h = PLOT_WIDTH - PLOT_MARGIN, PLOT_HEIGHT - PLOT_MARGIN

    def x(i: int) -> float:
        return PLOT_MARGIN + inner_w * i / max(frames - 1, 1)

    def y(v: float, lo: float = low, hi: float = high) -> float:
        return inner_h - (v - lo) / (hi - lo) * inner_h + 5

    parts = [f'<svg width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" xmlns="http://www.w3.org/2000/svg">']
    env = [v if v is not None else 0.0 for v in envelope]
    if env and max(env) > 0:
        top = max(env)
        base = y(0.0, 0.0, top)
        points = " ".join(f"{x(i):.1f},{y(v, 0.0, top):.1f}" for i, v in enumerate(env))
        parts.append(
            f'<polygon points="{x(0):.1f},{base:.1f} {points} {x(len(env) - 1):.1f},{base:.1f}" '
            f'fill="{ENVELOPE_COLOUR}" fill-opacity="0.5"/>'
        )
    seconds = frames / fps
    step = GRID_SECONDS * max(1, math.ceil(seconds / 20))
    tick = 0.0
    while tick <= seconds:
        gx = x(round(tick * fps))
        parts.append(f'<line x1="{gx:.1f}" y1="5" x2="{gx:.1f}" y2="{inner_h + 5}" stroke="#eee"/>')
        parts.append(f'<text x="{gx:.1f}" y="{inner_h + 20}" text-anchor="middle">{tick:g}s</text>')
        tick += step
    for value in (low, high):
        parts.append(
            f'<text x="{PLOT_MARGIN - 4}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.3g}</text>'
        )
    for s in series:
        run: list[str] = []
        for i, v in enumerate(s.values):
            if v is None or not math.isfinite(v):
                parts.append(_polyline(run, s.colour))
                run = []
            else:
                run.append(f"{x(i):.1f},{y(v):.1f}")
        parts.append(_polyline(run, s.colour))
    legend = [(s.label, s.colour) for s in series] + ([("audio envelope", ENVELOPE_COLOUR)] if env else [])
    legend_x = PLOT_MARGIN + 8
    for label, colour in legend:
        parts.append(f'<rect x="{legend_x}" y="{PLOT_HEIGHT - 13}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{legend_x + 14}" y="{PLOT_HEIGHT - 4}">{html.escape(label)}</text>')
        legend_x += LEGEND_CHAR_WIDTH * len(label) + 40
    parts.append("</svg>")
    return "".join(p for p in parts if p)


def _polyline(points: list[str], colour: str) -> str:
    if len(points) < 2:
        return ""
    return f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" stroke-width="1.5"/>'


def _metric_row(metric: Metric) -> str:
    arrow = BETTER_ARROWS[metric.better]
    name = html.escape(metric.name)
    if metric.status != "ok":
        needs = f"<br>needs: <code>{html.escape(metric.needs)}</code>" if metric.needs else ""
        return (
            f'<tr class="skipped"><td>{name}</td><td class="value">skipped</td>'
            f'<td class="definition">{html.escape(metric.skipped_reason)}{needs}</td></tr>'
        )
    value = html.escape(metric.shown + (f" {metric.unit}" if metric.unit else ""))
    return (
        f"<tr><td>{name} {arrow}</td><td class='value'>{value}<br><small>n = {metric.samples}</small></td>"
        f'<td class="definition">{html.escape(metric.definition)}</td></tr>'
    )


def render_html(report: EvalReport, thumbnails: Sequence[Thumbnail]) -> str:
    per = report.per_frame
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>lipsync evaluation</title>"]
    out.append(f"<style>{STYLE}</style></head><body><h1>lipsync evaluation</h1>")
    if report.untrained:
        out.append(
            "<p class='banner'>Some figures were computed with UNTRAINED (randomly initialised) metric "
            "weights: they show that the pipeline runs, not the quality of the video.</p>"
        )
    out.append("<table><tr><th>input</th><th>file</th><th>frames</th><th>faces found</th></tr>")
    for item in report.inputs:
        frames = f"{item.frames} ({item.seconds:.2f} s)" if item.frames else f"{item.seconds:.2f} s"
        faces = str(item.faces_found) if item.frames else ""
        out.append(
            f"<tr><td>{item.role}</td><td><code>{html.escape(item.path)}</code></td>"
            f"<td>{frames}</td><td>{faces}</td></tr>"
        )
    out.append("</table><h2>Figures</h2><table>")
    out.extend(_metric_row(m) for m in report.metrics)
    out.append("</table>")

    out.append("<h2>Per frame</h2>")
    # the two SyncNets' scores have different scales: one plot each
    for label, values in [
        ("syncnet_v2 framewise confidence (median-filtered, 9 frames)", per.sync_confidence_v2),
        ("our SyncNet sync probability per window", per.sync_confidence_own),
    ]:
        if values:
            plot = line_plot([Series(label, values, COLOURS[0])], per.fps, per.audio_envelope)
            out.append(_figure(plot, f"{label} against the audio envelope (grey)."))
    mouth = [
        Series("mouth opening, generated", per.mouth_opening_generated, COLOURS[0]),
        Series("mouth opening, reference", per.mouth_opening_reference, COLOURS[2]),
    ]
    mouth = [s for s in mouth if s.values]
    if mouth:
        out.append(
            _figure(
                line_plot(mouth, per.fps, per.audio_envelope),
                "Mouth opening (inner-lip gap / inter-ocular distance) against the audio envelope (grey).",
            )
        )
    quality = [
        s for s in [Series("SSIM", per.ssim, COLOURS[0]), Series("CSIM", per.csim, COLOURS[3])] if s.values
    ]
    if quality:
        out.append(_figure(line_plot(quality, per.fps), "Per-frame SSIM and CSIM against the reference."))

    if thumbnails:
        out.append("<h2>Frames</h2><div class='thumbs'>")
        for thumb in thumbnails:
            order = "reference | generated, then their face crops" if thumb.has_reference else "generated"
            data = base64.b64encode(thumb.jpeg).decode("ascii")
            out.append(
                f"<figure><img src='data:image/jpeg;base64,{data}' alt='frame {thumb.frame}'>"
                f"<figcaption>frame {thumb.frame} ({thumb.seconds:.2f} s): {order}</figcaption></figure>"
            )
        out.append("</div>")
    if report.notes:
        out.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>"
        )
    out.append(
        f"<p><small>lipsync {html.escape(report.lipsync_version)}, {html.escape(report.created)}, "
        f"{report.seconds:.1f} s</small></p></body></html>"
    )
    return "\n".join(out)


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def write_html(report: EvalReport, thumbnails: Sequence[Thumbnail], path: Path) -> Path:
    path.write_text(render_html(report, thumbnails), encoding="utf-8")
    return path
