"""``glioseg`` commands that run whole experiments: ``study label-efficiency`` and ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glioseg.cli.common import app, fail, study_app, user_errors


@study_app.command("label-efficiency")
@user_errors
def study_label_efficiency_cmd(
    out: Annotated[Path, typer.Option("--out", help="Study folder (re-running resumes it).")],
    seeds: Annotated[int | None, typer.Option(help="Seeds (labelled-case draws); default 3, "
                                              "1 with --quick.")] = None,
    n_labelled: Annotated[str | None, typer.Option(help="Labelled target cases, e.g. 1,2,4,8 "
                                                   "(default; 2 with --quick).")] = None,
    steps: Annotated[int | None, typer.Option(help="One fixed step budget for every target "
                                              "run (default: 50 per labelled case within "
                                              "100-250; 20 with --quick).")] = None,
    finetune_lr: Annotated[float | None, typer.Option(
        help="Peak learning rate when fine-tuning a supervised source model (default 1e-4; "
             "scratch and self-supervised arms keep the preset's).")] = None,
    quick: Annotated[bool, typer.Option(help="A ~2-minute version (small cohorts, short "
                                        "runs).")] = False,
) -> None:
    """Label efficiency on a synthetic target site: scratch vs fine-tuned vs self-supervised
    pretraining, with 1-8 labelled cases and 3 seeds, equal step budgets per number of cases;
    results.csv, summary.md (95% intervals over seeds), plots and study.json (render with
    `glioseg report OUT`). About 30 minutes on a 2-core CPU; --quick about 2."""
    from dataclasses import replace

    from glioseg.study import StudyPlan, quick_plan, run_study

    plan = quick_plan() if quick else StudyPlan()
    changes: dict[str, object] = {}
    if seeds is not None:
        changes["seeds"] = tuple(range(seeds))
    if n_labelled is not None:
        try:
            changes["n_labelled"] = tuple(int(v) for v in n_labelled.split(",") if v.strip())
        except ValueError:
            fail(f"--n-labelled {n_labelled!r}: expected integers, e.g. 1,2,4,8")
    if steps is not None:
        changes["steps"] = steps
    if finetune_lr is not None:
        changes["finetune_lr"] = finetune_lr
    if changes:
        plan = replace(plan, **changes)
    doc = run_study(out, plan)
    typer.echo(doc["verdict"])
    typer.echo(f"wrote {out / 'results.csv'}, {out / 'summary.md'}, {out / 'study.json'} and "
               f"{len(doc['figures'])} figures in {doc['wall_s']:.0f} s")


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Demo folder (re-running resumes it).")] =
        Path("glioseg-demo"),
    full: Annotated[bool, typer.Option(help="The 1 mm version with the full preset (for a "
                                       "GPU; hours on a CPU).")] = False,
    quick: Annotated[bool, typer.Option(help="A version of about a minute that checks the "
                                        "plumbing (tiny cohorts, a few steps; the numbers "
                                        "mean nothing).")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the plan and exit.")] = False,
) -> None:
    """Synthetic source and target sites -> domain shift -> train on the source -> fine-tune vs
    scratch on a few target cases -> predict + BraTS metrics -> OUT/report.html (~5 min on 2
    CPU cores)."""
    from glioseg.demo import run_demo
    from glioseg.workflows.demo_plan import describe_plan, plan_for

    plan = plan_for(quick=quick, full=full)
    for line in describe_plan(plan):
        typer.echo(line)
    if dry_run:
        return
    result = run_demo(out, plan, log=lambda line: typer.echo(line))
    typer.echo("")
    typer.echo(result["table"])
    typer.echo(result["verdict"])
    typer.echo(f"report: {result['report'].resolve()}  ({result['wall_s']:.0f} s; "
               f"ran {', '.join(result['ran']) or 'nothing'}"
               + (f"; skipped {', '.join(result['skipped'])} (done before)"
                  if result["skipped"] else "") + ")")
