"""One fault's result (``FaultResult``: the stage killed at a moment, what was left, how the
re-run went, its outcome) and the table ``glioseg bench faults`` prints of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

IDENTICAL = "recovered, identical"


@dataclass
class FaultResult:
    """One fault: the stage killed at a moment, what was left, how the re-run went."""

    stage: str
    moment: str
    tries: int = 0
    killed: bool = False
    at_kill: str = ""
    state: str = ""
    half_written: list[str] = field(default_factory=list)
    rerun: str = ""
    rerun_rc: int | None = None
    differences: list[str] = field(default_factory=list)
    debris: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        if not self.killed:
            return "not killed: the run ended before the moment"
        if self.half_written:
            return f"half-written output visible ({len(self.half_written)} file(s))"
        if self.rerun_rc != 0:
            return f"re-run failed (exit {self.rerun_rc})"
        if self.differences:
            return f"recovered, differs ({len(self.differences)} difference(s))"
        return IDENTICAL

    @property
    def ok(self) -> bool:
        return self.outcome == IDENTICAL


def format_table(results: Sequence[FaultResult]) -> str:
    """The fault table: stage, moment, tries, when killed, what was left, re-run, outcome."""
    head = ("fault", "moment", "tries", "killed at", "left by the kill", "re-run", "outcome")
    rows = [(r.stage, r.moment, str(r.tries), r.at_kill or "-", r.state or "-", r.rerun or "-",
             r.outcome) for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def format_details(results: Sequence[FaultResult]) -> list[str]:
    """Notes, differences, half-written files and debris, per fault."""
    out = []
    for r in results:
        items = ([f"half-written: {h}" for h in r.half_written]
                 + [f"differs: {d}" for d in r.differences[:8]]
                 + ([f"... {len(r.differences) - 8} more"] if len(r.differences) > 8 else [])
                 + r.notes
                 + ([f"debris after the re-run (hidden): {', '.join(r.debris)}"]
                    if r.debris else []))
        if items:
            out.append(f"{r.stage} / {r.moment}:")
            out += [f"  {x}" for x in items]
    return out

