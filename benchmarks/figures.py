"""One measured figure of ``benchmarks/run.py``, next to the baseline measured in the same run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    section: str
    what: str
    value: float
    unit: str
    baseline: str = ""
    """What the value is compared with ("" when it stands alone)."""
    baseline_value: float = 0.0
    note: str = ""
    lower_is_better: bool = False
    """Whether less is better (seconds always are)."""

    @property
    def ratio(self) -> float | None:
        """value / baseline; where lower is better (seconds) baseline / value, so above 1 always means better."""
        if not self.baseline or not self.baseline_value or not self.value:
            return None
        if self.lower_is_better or self.unit.startswith("s"):
            return self.baseline_value / self.value
        return self.value / self.baseline_value


def number(x: float) -> str:
    """Four significant digits, thousands separated, never in e-notation."""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def show(figure: Figure) -> str:
    """One console line."""
    line = f"  {figure.what}: {number(figure.value)} {figure.unit}"
    if figure.ratio is not None:
        line += f"   vs {figure.baseline} {number(figure.baseline_value)}: {figure.ratio:.2f}x"
    return line + (f"   ({figure.note})" if figure.note else "")
