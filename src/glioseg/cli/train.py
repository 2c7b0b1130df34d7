"""``glioseg`` commands that train or describe models: train, finetune, pretrain, plot, card
and import-checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glioseg.cli.common import app, fail, user_errors

# Options shared by train, finetune and pretrain (one definition, one help text).
ConfigOpt = Annotated[str | None, typer.Option("--config", help="YAML file or preset (small, "
                                               "full); default small, or OUT/config.yaml with "
                                               "--resume.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override, e.g. train.steps=200 "
                                                  "(repeatable).")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue the run in OUT (an error if it has no "
                                         "checkpoint).")]
NprocOpt = Annotated[int, typer.Option(help="Processes per node (torchrun).")]
NnodesOpt = Annotated[int, typer.Option(help="Nodes (torchrun, c10d rendezvous).")]
NodeRankOpt = Annotated[int, typer.Option(help="This node's rank.")]
RdzvOpt = Annotated[str | None, typer.Option(help="HOST:PORT every node reaches.")]
MaxRestartsOpt = Annotated[int, typer.Option(help="torchrun restarts of crashed workers (they "
                                              "resume from the last checkpoint).")]
LabelsOpt = Annotated[str | None, typer.Option(help="Label scheme of raw --data's segmentations "
                                               "when not what the file names say (e.g. "
                                               "brats2023 for BraTS 2021 names with 0/1/2/3 "
                                               "labels); see glioseg preprocess --labels.")]


@app.command()
@user_errors
def train(
    out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints, metrics, curves.")],
    data: Annotated[Path | None, typer.Option("--data", help="A preprocessed cache, or a raw "
                                              "BraTS folder (preprocessed into OUT/cache).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    nproc: NprocOpt = 1,
    nnodes: NnodesOpt = 1,
    node_rank: NodeRankOpt = 0,
    rdzv_endpoint: RdzvOpt = None,
    max_restarts: MaxRestartsOpt = 0,
    spacing: Annotated[float | None, typer.Option(help="Resample raw --data to this isotropic "
                                                  "spacing (mm) when preprocessing.")] = None,
    profile: Annotated[bool, typer.Option(help="Profile a few steps instead of training.")] = False,
    profile_steps: Annotated[int, typer.Option(help="Steps to profile.")] = 4,
    labels: LabelsOpt = None,
) -> None:
    """Train a segmentation model on one process, or many with --nproc / --nnodes (DDP)."""
    _launch(out, data, config, list(set_ or []), resume=resume, nproc=nproc, nnodes=nnodes,
            node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, max_restarts=max_restarts,
            spacing=spacing, profile=profile, profile_steps=profile_steps,
            labels=declared_labels(labels))


def declared_labels(labels: str | None) -> str | None:
    """``--labels``, checked (an unknown scheme is a one-line error naming the option)."""
    from glioseg.data.labels import declared_scheme

    return declared_scheme(labels, "--labels")


def _launch(out: Path, data: Path | None, config: str | None, sets: list[str],
            **kwargs: object) -> None:
    """``glioseg.train.launch.launch_training``, printing through typer; exits with torchrun's
    status when the run was relaunched under it, and with 130 after Ctrl-C, saying where the
    run stopped and how to continue it."""
    from glioseg.train.launch import launch_training

    try:
        code = launch_training(out, data, config, sets, log=typer.echo, **kwargs)  # type: ignore[arg-type]
    except KeyboardInterrupt as exc:
        typer.echo(str(exc) or "interrupted", err=True)
        raise typer.Exit(130) from None
    if code is not None:
        raise typer.Exit(code)


@app.command()
@user_errors
def finetune(
    from_: Annotated[Path, typer.Option("--from", help="Pretrained model: a run's best/ or "
                                        "last/ folder, an imported checkpoint folder, a "
                                        ".safetensors or card.json.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder of the fine-tuning.")],
    data: Annotated[Path | None, typer.Option("--data", help="The new site's cache or raw "
                                              "BraTS folder (labelled cases).")] = None,
    strategy: Annotated[str, typer.Option(help="full, frozen-encoder, gradual or "
                                          "discriminative.")] = "full",
    modalities: Annotated[str | None, typer.Option(help="The new site's sequences by name, in "
                                                   "input order, e.g. t2,t1 (default: the "
                                                   "pretrained model's when the data has them "
                                                   "all, else the data's, adapted by "
                                                   "name).")] = None,
    layer_decay: Annotated[float, typer.Option(help="Learning-rate factor per stage towards the "
                                               "input (0: the strategy's default).")] = 0.0,
    new_head: Annotated[bool, typer.Option(help="Start the output heads afresh.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    nproc: NprocOpt = 1,
    nnodes: NnodesOpt = 1,
    node_rank: NodeRankOpt = 0,
    rdzv_endpoint: RdzvOpt = None,
    max_restarts: MaxRestartsOpt = 0,
    spacing: Annotated[float | None, typer.Option(help="Resample raw --data to this isotropic "
                                                  "spacing (mm); default: the model card's.")] = None,
    labels: LabelsOpt = None,
) -> None:
    """Fine-tune a pretrained model on a new site: loads what fits by name and shape, maps
    input sequences by name, prints the load report, trains with the chosen strategy."""
    from glioseg.model.card import load_card
    from glioseg.train import launch

    card = load_card(from_)
    mods = launch.finetune_sequences(card, modalities, data, resume, log=typer.echo)
    if spacing is None:
        spacing = launch.card_spacing(card, data)
    sets = launch.finetune_overrides(card, from_, strategy=strategy, layer_decay=layer_decay,
                                     new_head=new_head, modalities=mods, sets=set_ or [],
                                     resume=resume)
    _launch(out, data, config, sets, resume=resume, nproc=nproc, nnodes=nnodes,
            node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, max_restarts=max_restarts,
            spacing=spacing, modalities=mods, labels=declared_labels(labels))


@app.command()
@user_errors
def pretrain(
    out: Annotated[Path, typer.Option("--out", help="Run folder of the pretraining.")],
    data: Annotated[Path | None, typer.Option("--data", help="Cache or raw BraTS folder; "
                                              "labels are not needed.")] = None,
    modalities: Annotated[str | None, typer.Option(help="Sequences by name, in input order "
                                                   "(default t1,t1ce,t2,flair).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    nproc: NprocOpt = 1,
    nnodes: NnodesOpt = 1,
    node_rank: NodeRankOpt = 0,
    rdzv_endpoint: RdzvOpt = None,
    max_restarts: MaxRestartsOpt = 0,
    spacing: Annotated[float | None, typer.Option(help="Resample raw --data to this isotropic "
                                                  "spacing (mm) when preprocessing.")] = None,
    labels: LabelsOpt = None,
) -> None:
    """Self-supervised pretraining on unlabelled scans (Models Genesis restoration with the
    segmentation network, so its encoder and decoder transfer to `glioseg finetune`)."""
    from glioseg.train.launch import pretrain_overrides

    sets, mods = pretrain_overrides(modalities, set_ or [])
    _launch(out, data, config, sets, resume=resume, nproc=nproc, nnodes=nnodes,
            node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, max_restarts=max_restarts,
            spacing=spacing, modalities=mods, labels=declared_labels(labels))


@app.command()
@user_errors
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A training run folder.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="PNG (default "
                                                "RUN_DIR/curves.png).")] = None,
) -> None:
    """Draw the training loss and validation Dice curves of a run."""
    from glioseg.report.curves import plot_run

    path = plot_run(run_dir, output)
    typer.echo(f"wrote {path}")


@app.command()
@user_errors
def card(
    checkpoint: Annotated[Path, typer.Argument(help="Model folder, model.safetensors or card.json.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the card's JSON as stored.")] = False,
    et_threshold: Annotated[int | None, typer.Option(help="Record the ET rule threshold "
                                                     "(voxels; e.g. chosen on validation "
                                                     "cases) in the card; predict uses it.")
                            ] = None,
) -> None:
    """Print a model's card: architecture, inputs, outputs, preprocessing, training, provenance."""
    from glioseg.model.card import CARD_NAME, load_card, resolve_paths, save_card

    model_card = load_card(checkpoint)
    if et_threshold is not None:
        if et_threshold < 0:
            fail(f"--et-threshold must be >= 0, got {et_threshold}")
        model_card = model_card.replace(et_threshold=et_threshold)
        path = checkpoint if checkpoint.name == CARD_NAME else resolve_paths(checkpoint)[1]
        save_card(path, model_card)
    typer.echo(model_card.to_json() if as_json else model_card.summary(), nl=not as_json)


@app.command("import-checkpoint")
@user_errors
def import_checkpoint_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="The foreign checkpoint file.")],
    kind: Annotated[str, typer.Option(help="monai-segresnet, swinunetr, swinvit-ssl or nnunet.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model folder to write.")],
    modalities: Annotated[str | None, typer.Option(help="Comma list of input sequences in the "
                                                   "checkpoint's order (when it does not say).")] = None,
    array_axes: Annotated[str, typer.Option(help="nnunet: zyx (SimpleITK reader) or xyz "
                                            "(NibabelIO).")] = "zyx",
) -> None:
    """Convert a MONAI / nnU-Net checkpoint into a model folder (safetensors + card), safely."""
    from glioseg.transfer.foreign import import_checkpoint

    kwargs: dict[str, object] = {}
    if modalities:
        kwargs["modalities"] = tuple(m.strip() for m in modalities.split(",") if m.strip())
    if kind == "nnunet":
        kwargs["array_axes"] = array_axes
    imported = import_checkpoint(checkpoint, kind, **kwargs)
    out = imported.save(output)
    for note in imported.notes:
        typer.echo(f"note: {note}")
    typer.echo(imported.card.summary())
    typer.echo(f"wrote {out}")
