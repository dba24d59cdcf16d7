"""How the admin shows time spans, short ids and the history chart: pure, no ORM, no I/O."""

from collections.abc import Sequence
from datetime import timedelta
from html import escape

SHORT_ID_LENGTH = 8


def short_id(value: object) -> str:
    """The first characters of an id: enough to tell sessions apart on one screen."""
    return str(value)[:SHORT_ID_LENGTH]


def short_span(span: timedelta, *, seconds: bool = True) -> str:
    """A duration as an operator reads it at a glance: "42 s", "3 min", "2 h 5 min", "3 d 4 h".

    Without `seconds`, anything under a minute is "<1 min": a list of ages then changes once a
    minute, not at every refresh.
    """
    total = max(0, int(span.total_seconds()))
    if total < 60:
        return f"{total} s" if seconds else "<1 min"
    minutes = total // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def minute_chart_svg(
    opened: Sequence[int], ended: Sequence[int], *, labels: Sequence[str], width: int = 600, height: int = 120
) -> str:
    """Opened (up) and ended (down) per minute as an inline SVG bar chart, oldest minute on the left.

    `labels` names each minute (e.g. "09:41"): the first and last are drawn, every bar has its title.
    """
    count = len(opened)
    axis, top, bottom = 24, 14, 16  # room for the scale on the left, the legend above, times below
    plot_width, half = width - axis, (height - top - bottom) / 2
    middle = top + half
    peak = max([1, *opened, *ended])
    step = plot_width / max(count, 1)
    bar = max(step - 1, 1)
    parts = [
        f'<svg class="activity-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="Sessions opened and ended per minute, last {count} minutes">',
        f'<text x="{axis}" y="10" class="legend-opened">▲ opened</text>',
        f'<text x="{axis + 70}" y="10" class="legend-ended">▼ ended</text>',
        f'<text x="{axis - 4}" y="{top + 8}" text-anchor="end" class="scale">{peak}</text>',
        f'<text x="{axis - 4}" y="{height - bottom}" text-anchor="end" class="scale">{peak}</text>',
        f'<line x1="{axis}" x2="{width}" y1="{middle}" y2="{middle}" class="axis"/>',
    ]
    for index, (up, down) in enumerate(zip(opened, ended, strict=True)):
        x = axis + index * step
        title = f"<title>{escape(labels[index])}: {up} opened, {down} ended</title>"
        if up:
            size = half * up / peak
            parts.append(
                f'<rect class="opened" x="{x:.1f}" y="{middle - size:.1f}" width="{bar:.1f}" height="{size:.1f}">'
                f"{title}</rect>"
            )
        if down:
            size = half * down / peak
            parts.append(
                f'<rect class="ended" x="{x:.1f}" y="{middle:.1f}" width="{bar:.1f}" height="{size:.1f}">{title}</rect>'
            )
    if labels:
        parts.append(f'<text x="{axis}" y="{height - 2}" class="scale">{escape(labels[0])}</text>')
        parts.append(f'<text x="{width}" y="{height - 2}" text-anchor="end" class="scale">{escape(labels[-1])}</text>')
    parts.append("</svg>")
    return "".join(parts)
