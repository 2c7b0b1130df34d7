"""``glioseg inspect``: discover and validate every case of a data folder, print what was found.

One table row per case (id, layout, modalities, shape, spacing, orientation, label voxel
counts, status), then every problem and warning on its own line naming the case, the file
and what is wrong, then a summary line. One bad case never hides another: every case is
examined, whatever happened to the ones before it.

With ``modalities`` (``glioseg inspect DIR --modalities t2,t1``) only those sequences are
required and checked; the table lists a present but unused sequence in parentheses.

With ``label_scheme`` (``glioseg inspect DIR --labels brats2023``) the segmentations are read in
that scheme instead of their layout's (e.g. BraTS 2021 cases whose labels nnU-Net converted to
0/1/2/3).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from glioseg.data import labels as L
from glioseg.data.cases import Case, CaseSummary, discover, examine_case, selected_modalities

LABEL_NAMES: dict[int, str] = {L.NCR: "NCR", L.ED: "ED", L.ET: "ET"}
"""Short names of the internal tumour labels, in the order shown."""


def examine_all(cases: list[Case], read_voxels: bool = True,
                console: Console | None = None,
                modalities: str | Sequence[str] | None = None) -> list[CaseSummary]:
    """``examine_case`` for every case, with a progress bar on a terminal.

    ``modalities``: the sequences to use (default all four; see ``examine_case``).

    An unexpected exception in one case becomes a problem of that case, so the others are
    still examined.
    """
    console = console or Console(stderr=True)
    summaries = []
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                  transient=True, disable=len(cases) < 2) as progress:
        task = progress.add_task("checking cases", total=len(cases))
        for case in cases:
            try:
                summaries.append(examine_case(case, read_voxels=read_voxels,
                                              modalities=modalities))
            except Exception as exc:  # noqa: BLE001 - reported as a problem of this case
                summaries.append(CaseSummary(case, problems=[
                    f"{case.case_id}: {case.folder}: unexpected error "
                    f"{type(exc).__name__}: {exc}"]))
            progress.advance(task)
    return summaries


def _fmt_labels(counts: dict[int, int] | None, case: Case, read_voxels: bool) -> str:
    if counts is None:
        if case.seg is None:
            return "no seg"
        return "-" if read_voxels else "(not read)"
    return " ".join(f"{LABEL_NAMES[k]} {counts[k]}" for k in LABEL_NAMES)


def _fmt_modalities(case: Case, used: Sequence[str]) -> str:
    """The case's sequences: those used, then the present but unused ones in parentheses."""
    if case.layout == "msd":
        return " ".join(used) + " (4D)"
    text = " ".join(m for m in L.MODALITIES if m in case.images and m in used)
    unused = [m for m in L.MODALITIES if m in case.images and m not in used]
    return text + (f" ({' '.join(unused)} unused)" if unused else "")


def summary_table(summaries: list[CaseSummary], read_voxels: bool = True,
                  modalities: str | Sequence[str] | None = None) -> Table:
    """A rich table, one row per case (``modalities``: the sequences used, default all)."""
    used = selected_modalities(modalities)
    table = Table(title="cases", title_justify="left", header_style="bold")
    table.add_column("case", no_wrap=True)
    table.add_column("layout", no_wrap=True)
    table.add_column("modalities")
    table.add_column("shape", no_wrap=True)
    table.add_column("spacing (mm)")
    table.add_column("orient.", no_wrap=True)
    table.add_column("labels (voxels)", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for s in summaries:
        c = s.case
        mods = _fmt_modalities(c, used).strip()
        if c.seg is not None:
            mods += " seg"
        status = ("[red]BAD[/red]" if s.problems
                  else "[yellow]warning[/yellow]" if s.warnings else "[green]ok[/green]")
        table.add_row(
            escape(c.case_id),
            c.layout,
            mods or "-",
            "x".join(str(n) for n in s.shape) if s.shape else "-",
            "x".join(f"{v:g}" for v in s.spacing) if s.spacing else "-",
            "".join(s.orientation) if s.orientation else "-",
            _fmt_labels(s.label_counts, c, read_voxels),
            status,
        )
    return table


MISSING_HINT = ("hint: to use cases that have only some sequences, name the ones to use, "
                "e.g. --modalities t2,t1")


def report(summaries: list[CaseSummary], console: Console, read_voxels: bool = True,
           modalities: str | Sequence[str] | None = None) -> int:
    """Print the table, the problems, the warnings and a summary line; returns the bad count.

    The summary line names the label scheme declared for the segmentations, if any.
    """
    console.print(summary_table(summaries, read_voxels, modalities))
    problems = [p for s in summaries for p in s.problems]
    warnings = [w for s in summaries for w in s.warnings]
    # soft_wrap: one problem per line, never cut, so it can be grepped.
    for p in problems:
        console.print(f"[red]problem[/red] {escape(p)}", soft_wrap=True)
    for w in warnings:
        console.print(f"[yellow]warning[/yellow] {escape(w)}", soft_wrap=True)
    n_bad = sum(1 for s in summaries if s.problems)
    n_warn = sum(1 for s in summaries if s.warnings and not s.problems)
    layouts = sorted({s.case.layout for s in summaries})
    declared = sorted({s.case.declared_labels for s in summaries if s.case.declared_labels})
    if declared:
        layouts[-1] += f"; labels read as {', '.join(declared)}"
    colour = "red" if n_bad else "green"
    mode = "" if read_voxels else " (headers only: --quick)"
    console.print(
        f"[{colour}]{len(summaries)} cases ({', '.join(layouts)}): {len(summaries) - n_bad} usable "
        f"({n_warn} with warnings), {n_bad} bad; {len(problems)} problems[/{colour}]{mode}",
        soft_wrap=True,
    )
    if modalities is None and any(s.case.lacks(L.MODALITIES) and s.case.images
                                  for s in summaries):
        console.print(MISSING_HINT, soft_wrap=True)
    if any(re.search(r"label values \[3\] (for|are not allowed in) the brats20(20|21) scheme", p)
           for p in problems):
        console.print(f"hint: {L.ET_AS_3_HINT}", soft_wrap=True)
    return n_bad


def inspect_dir(data_dir: str | Path, read_voxels: bool = True,
                console: Console | None = None,
                modalities: str | Sequence[str] | None = None,
                label_scheme: str | None = None) -> int:
    """Discover, validate and print every case of ``data_dir``; returns the number of bad cases.

    Args:
        data_dir: a data folder in any layout ``glioseg.data.cases.discover`` knows.
        read_voxels: False reads headers only (fast; misses truncated data, NaN, label values).
        console: where to print (default: standard output).
        modalities: the sequences to use (e.g. ``"t2,t1"``); a case needs only those. Default:
            all four.
        label_scheme: the label scheme of the segmentations (``brats2020``, ``brats2021``,
            ``brats2023``, ``msd``), overriding each layout's; None: the layout's.

    Raises:
        CaseError: if ``data_dir`` does not exist or holds no case. LabelError: an unknown
            ``label_scheme`` or modality.
    """
    if console is None:
        console = Console()
        if not console.is_terminal:  # a file or a pipe: do not squeeze the table to 80 columns
            console = Console(width=max(console.width, 180))
    selected_modalities(modalities)  # an unknown name fails before any case is read
    cases = discover(data_dir, label_scheme)
    summaries = examine_all(cases, read_voxels=read_voxels, modalities=modalities)
    return report(summaries, console, read_voxels, modalities)
