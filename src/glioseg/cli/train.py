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
) -> None:
    """Train a segmentation model on one process, or many with --nproc / --nnodes (DDP)."""
    _launch_training(out, data, config, list(set_ or []), resume=resume, nproc=nproc,
                     nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                     max_restarts=max_restarts, spacing=spacing, profile=profile,
                     profile_steps=profile_steps)


def _launch_training(out: Path, data: Path | None, config: str | None,
                     sets: list[str], *, resume: bool = False, nproc: int = 1, nnodes: int = 1,
                     node_rank: int = 0, rdzv_endpoint: str | None = None,
                     max_restarts: int = 0, spacing: float | None = None,
                     profile: bool = False, profile_steps: int = 4,
                     modalities: list[str] | None = None) -> None:
    """What ``train``, ``finetune`` and ``pretrain`` share: resolve the config, prepare the
    data, then run here or relaunch this command's workers under torchrun."""
    import subprocess

    from glioseg.train import config as C
    from glioseg.train import fit as F

    base = config
    if base is None:
        saved = out / "config.yaml"
        base = str(saved) if resume and saved.is_file() else "small"
    if data is not None:
        cache = F.prepare_data(data, out, spacing=spacing, modalities=modalities)
        sets.append(f"data.cache_dir={cache.resolve()}")
    cfg = C.load_config(base, sets)
    if not cfg.data.cache_dir:
        fail("no data: pass --data CACHE_OR_DATA_DIR (or --resume a run that has one)")
    if nproc > 1 or nnodes > 1:
        out.mkdir(parents=True, exist_ok=True)
        launch = out / "launch.yaml"
        # one writer: node 0's launcher. The workers of every node read its file; they
        # start only once every node's agent joined the rendezvous, node 0's after this.
        if node_rank == 0:
            C.dump_config(cfg, launch)
        args = ["--out", str(out), "--config", str(launch)]
        args += ["--resume"] if resume else []
        args += ["--profile", "--profile-steps", str(profile_steps)] if profile else []
        cmd = F.torchrun_command(args, nproc=nproc, nnodes=nnodes, node_rank=node_rank,
                                 rdzv_endpoint=rdzv_endpoint, max_restarts=max_restarts,
                                 run_id=out.resolve().name)
        raise typer.Exit(subprocess.run(cmd, env=F.torchrun_env(nnodes)).returncode)
    if profile:
        from glioseg.train.profile import profile_training

        profile_training(cfg, out, steps=profile_steps)
        return
    summary = F.fit(cfg, out, resume=resume)
    if summary.get("rank", 0) != 0:
        return
    if summary.get("n_cases"):
        typer.echo(f"step {summary['step']}: validation Dice WT {summary['dice_WT']:.3f} "
                   f"TC {summary['dice_TC']:.3f} ET {summary['dice_ET']:.3f}; best mean "
                   f"{summary['best_metric']:.3f} at step {summary['best_step']}; run in {out}")
        pipeline = summary.get("val_pipeline", "")
        typer.echo(f"validated with: {pipeline}" + (
            " (as glioseg predict does by default)" if pipeline == "whole volume" else
            " (glioseg predict --mode sliding with this ROI and overlap repeats it)"))
    else:
        typer.echo(f"step {summary['step']}; run in {out}")


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
) -> None:
    """Fine-tune a pretrained model on a new site: loads what fits by name and shape, maps
    input sequences by name, prints the load report, trains with the chosen strategy."""
    from glioseg.model.card import load_card

    card = load_card(from_)
    mods = _finetune_modalities(card, modalities, data, resume)
    if spacing is None and data is not None and not (data / "dataset.json").is_file():
        sp = (card.preprocessing or {}).get("spacing")
        spacing = float(sp[0]) if sp else None
    sets = [f"transfer.init_from={from_.resolve()}", f"transfer.strategy={strategy}",
            f"transfer.layer_decay={layer_decay}", f"transfer.new_head={new_head}",
            *([f"data.modalities=[{','.join(mods)}]"] if mods else []), *(set_ or [])]
    if not resume:
        sets = _card_model_overrides(card) + sets
    _launch_training(out, data, config, sets, resume=resume, nproc=nproc,
                     nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                     max_restarts=max_restarts, spacing=spacing, modalities=mods)


def _finetune_modalities(card: object, modalities: str | None, data: Path | None,
                         resume: bool) -> list[str] | None:
    """The fine-tuning run's sequences: ``--modalities``; else read from ``--data``
    (``glioseg.train.fit.finetune_modalities``: the card's when the data has them all, else
    the data's, saying so); else the card's, or None on ``--resume`` (the run's config keeps
    its own)."""
    from glioseg.model.weights import canonical_modality
    from glioseg.train import fit as F

    if modalities:
        return [canonical_modality(m) for m in modalities.split(",") if m.strip()]
    source = [canonical_modality(m) for m in card.modalities]  # type: ignore[attr-defined]
    if data is None:
        return None if resume else source
    available, where = F.data_modalities(data)
    mods = F.finetune_modalities(source, available)
    if mods != source:
        typer.echo(f"sequences: {', '.join(mods)}, read from the data ({where}); the pretrained "
                   f"model takes {', '.join(source)}: its input filters are adapted by name "
                   "(see the load report; --modalities chooses others)")
    return mods


_NOT_FROM_CARD = ("in_channels", "out_channels", "deep_supervision", "patch_size",
                  "gradient_checkpointing")


def _card_model_overrides(card: object) -> list[str]:
    """``model.*`` overrides giving the pretrained model's architecture (its weights load only
    into a network of the same shape), and its training patch size: fine-tuning on smaller
    patches than the model learnt on lowered target Dice in the label-efficiency study
    (instance-norm statistics of small tumour-centred patches differ from whole-volume ones).
    Inputs, outputs and deep supervision stay the fine-tuning run's own; ``--set`` wins."""
    import json

    model = dict(card.model)  # type: ignore[attr-defined]
    sets = [f"model.{k}={json.dumps(v)}" for k, v in model.items() if k not in _NOT_FROM_CARD]
    if model.get("patch_size"):
        sets.append(f"data.patch_size={json.dumps(list(model['patch_size']))}")
    return sets


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
) -> None:
    """Self-supervised pretraining on unlabelled scans (Models Genesis restoration with the
    segmentation network, so its encoder and decoder transfer to `glioseg finetune`)."""
    sets = ["train.task=genesis", *(set_ or [])]
    if modalities:
        from glioseg.model.weights import canonical_modality

        mods = [canonical_modality(m) for m in modalities.split(",") if m.strip()]
        sets.insert(1, f"data.modalities=[{','.join(mods)}]")
    _launch_training(out, data, config, sets, resume=resume, nproc=nproc,
                     nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                     max_restarts=max_restarts, spacing=spacing,
                     modalities=mods if modalities else None)


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
