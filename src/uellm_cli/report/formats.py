"""How numbers read in every view (terminal, report.html, `uellm plan`, history): one place, so a
missing value is "n/a" everywhere and every number carries its unit."""

from __future__ import annotations


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def fmt_s(x: float | None) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 120:
        return f"{x / 60:.1f} min"
    return f"{x:.3g} s" if abs(x) < 10 else f"{x:.1f} s"


def fmt_rate(x: float | None, unit: str = "tok/s") -> str:
    return "n/a" if x is None else f"{x:,.1f} {unit}"


def fmt_signed_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def fmt_bytes(x: float | None) -> str:
    if x is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(x) < 1024 or unit == "TiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{x} B"  # pragma: no cover


def fmt_si(x: float | None, unit: str) -> str:
    """A rate with an SI prefix: 1.2 TFLOP/s, 900.0 GB/s."""
    if x is None:
        return "n/a"
    for prefix, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= size:
            return f"{x / size:.1f} {prefix}{unit}"
    return f"{x:.0f} {unit}"


def fmt_expected_slo(forecast: dict | None) -> str | None:
    """"55% expected (51-59% over 16 draws of the rows' lengths)" for a forecast with drawn
    lengths (report/metrics.EXPECTED_SLO_KEYS), else None."""
    forecast = forecast or {}
    expected = forecast.get("expected_slo_attainment")
    if expected is None:
        return None
    low, high = forecast.get("slo_attainment_range") or (expected, expected)
    return (f"{fmt_pct(expected)} expected ({fmt_pct(low)}-{fmt_pct(high)} over "
            f"{forecast.get('slo_draws')} draws of the rows' lengths)")
