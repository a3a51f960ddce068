"""Flame graphs as standalone SVG documents, drawn from collapsed call stacks (no external program).

The input is the collapsed-stack mapping ``{"root;frame;...;leaf": count}``
(:mod:`hpcblend.analysis.flamegraph` merges and selects them); the output is an
SVG of rectangles and text, root at the bottom, as ``flamegraph.pl`` draws it
(Gregg 2016, CACM 59(6), 48): width proportional to samples, siblings in
alphabetical order so merged graphs are stable, stage frames blue-grey, idle
stages grey, rank roots green, code in warm colours.
"""

from __future__ import annotations

import os
import zlib
from typing import Any, Mapping, Optional
from xml.sax.saxutils import escape

from hpcblend.diagnostics.stages import IDLE_STAGES, OTHER_STAGE

__all__ = ["flamegraph_svg", "write_flamegraph_svg"]


def _tree(stacks: Mapping[str, int]) -> dict:
    root = {"n": 0, "children": {}}
    for line, n in stacks.items():
        n = int(n)
        if n <= 0:
            continue
        root["n"] += n
        node = root
        for label in line.split(";"):
            node = node["children"].setdefault(label, {"n": 0, "children": {}})
            node["n"] += n
    return root


def _depth(node: dict) -> int:
    return 1 + max((_depth(c) for c in node["children"].values()), default=0)


def _color(label: str) -> str:
    """Deterministic colour: stages blue-grey, rank roots green, idle stages grey, code warm (flamegraph.pl 'hot')."""
    h = zlib.crc32(label.encode("utf-8"))
    v1, v2, v3 = (h & 0xFF) / 255.0, ((h >> 8) & 0xFF) / 255.0, ((h >> 16) & 0xFF) / 255.0
    if label.startswith("stage:"):
        if label[6:] in IDLE_STAGES or label[6:] == OTHER_STAGE:
            g = int(170 + 40 * v1)
            return f"rgb({g},{g},{g})"
        return f"rgb({int(90 + 40 * v1)},{int(140 + 40 * v2)},{int(200 + 40 * v3)})"
    if label.startswith("rank:"):
        return f"rgb({int(100 + 40 * v1)},{int(190 + 40 * v2)},{int(110 + 40 * v3)})"
    return f"rgb({int(205 + 50 * v3)},{int(230 * v1)},{int(55 * v2)})"


def _short(label: str) -> str:
    """Text shown in a box: the function name of ``file:function:line`` labels."""
    parts = label.split(":")
    if len(parts) == 3 and parts[2].split("@")[0].isdigit():
        line = parts[2].split("@")
        return f"{parts[1]}@{line[1]}" if len(line) > 1 else parts[1]
    return label


def flamegraph_svg(stacks: Mapping[str, int], title: str = "Flame graph", width: int = 1200,
                   frame_height: int = 16, font_size: float = 11.0, min_width_px: float = 0.3,
                   seconds_per_sample: Optional[float] = None) -> str:
    """Draw a flame graph (root at the bottom) as a standalone SVG document.

    Parameters
    ----------
    stacks : dict of str -> int
        Collapsed stacks, root first.
    title : str
    width : int
        Image width in px.
    frame_height : int
        Height of one stack level in px.
    font_size : float
    min_width_px : float
        Frames narrower than this are left out (with their children).
    seconds_per_sample : float, optional
        Adds seconds to the hover text.

    Returns
    -------
    str
        SVG text: a ``<rect>`` per frame with width ∝ samples, a ``<text>``
        label where it fits, and a ``<title>`` (hover: full frame name,
        samples, percent). Siblings are ordered alphabetically (as
        ``flamegraph.pl``), so merged graphs are stable.
    """
    root = _tree(stacks)
    total = root["n"]
    pad, top = 10, 40
    depth = _depth(root) if total else 1  # includes the "all" root
    height = top + depth * frame_height + 2 * pad
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Verdana, DejaVu Sans, sans-serif" font-size="{font_size}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fdfdf6"/>',
        f'<text x="{width / 2:.1f}" y="22" text-anchor="middle" font-size="{font_size + 5}">{escape(title)}</text>',
    ]
    if not total:
        out.append(f'<text x="{width / 2:.1f}" y="{top + frame_height}" text-anchor="middle">no samples</text>')
        out.append("</svg>")
        return "\n".join(out)
    scale = (width - 2 * pad) / total
    char_w = 0.59 * font_size

    def describe(label: str, n: int) -> str:
        pct = 100.0 * n / total
        s = f"{label} ({n} samples, {pct:.2f}%"
        if seconds_per_sample:
            s += f", {n * seconds_per_sample:.3f} s"
        return s + ")"

    def draw(label: str, node: dict, x: float, level: int) -> None:
        w = node["n"] * scale
        if w < min_width_px:
            return
        y = height - pad - (level + 1) * frame_height
        fill = "rgb(230,230,230)" if label == "all" else _color(label)
        out.append(f'<g><title>{escape(describe(label, node["n"]))}</title>'
                   f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{frame_height - 1}" fill="{fill}" '
                   f'rx="2" ry="2"/>')
        text = _short(label)
        room = int((w - 6) / char_w)
        if room >= 3:
            if len(text) > room:
                text = text[: room - 2] + ".."
            out.append(f'<text x="{x + 3:.2f}" y="{y + frame_height - 4.5:.1f}">{escape(text)}</text>')
        out.append("</g>")
        cx = x
        for child in sorted(node["children"]):
            c = node["children"][child]
            draw(child, c, cx, level + 1)
            cx += c["n"] * scale

    draw("all", root, float(pad), 0)
    out.append("</svg>")
    return "\n".join(out)


def write_flamegraph_svg(path: str | os.PathLike, stacks: Mapping[str, int], **kwargs: Any) -> str:
    """Write :func:`flamegraph_svg` to ``path``; returns the path."""
    path = os.fspath(path)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(flamegraph_svg(stacks, **kwargs))
    return path
