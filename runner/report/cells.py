"""How the printed report writes one value: '-' for a missing one, numbers to four digits, durations
as 1h02m or 3m05s, long text cut to its width."""

from __future__ import annotations


def cell_text(value: object) -> str:
    return "-" if value is None else str(value)


def number_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
