"""``predict`` + ``evaluate`` of a trained model equal the model's own in-loop validation on the
same cases (same Dice definition), on a synthetic cohort of each site profile; the training
summary names the pipeline it validated with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glioseg.data.synthetic import write_cohort
from glioseg.evaluate.folder import evaluate_folder
from glioseg.infer.predict import PredictOptions, predict_dir
from glioseg.preprocess.run import preprocess_dir

SETS = ["model.base_width=8", "model.n_stages=3", "model.max_width=32",
        "data.patch_size=[32,32,32]", "data.batch_size=2", "data.workers=0", "data.n_val=0",
        "train.amp=none", "train.threads=2", "train.channels_last=false", "train.steps=40",
        "train.val_every=40", "train.ckpt_every=40", "train.log_every=20", "optim.lr=0.01",
        "optim.warmup_steps=5", "train.seed=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small model trained on source-site cases, validated in the loop on target-site cases;
    held-out cohorts of both sites (raw and cached)."""
    from glioseg.train import config as C
    from glioseg.train import fit as F

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("agreement")
    raw = {"train": root / "raw" / "train", "source": root / "raw" / "source",
           "target": root / "raw" / "target"}
    write_cohort(raw["train"], n_cases=3, layout="brats2023", site="source", seed=5, spacing=4.0)
    write_cohort(raw["source"], n_cases=2, layout="brats2023", site="source", seed=5,
                 spacing=4.0, start=3)
    write_cohort(raw["target"], n_cases=2, layout="brats2023", site="target", seed=6,
                 spacing=4.0)
    cache = {k: root / "cache" / k for k in raw}
    for k in raw:
        preprocess_dir(raw[k], cache[k])
    cfg = C.load_config("small", [*SETS, f"data.cache_dir={cache['train']}",
                                  f"data.val_cache={cache['target']}"])
    summary = F.fit(cfg, root / "run", resume=False)
    return {"root": root, "raw": raw, "cache": cache, "summary": summary}


@pytest.mark.slow
@pytest.mark.parametrize("site", ["source", "target"])
def test_predict_then_evaluate_equals_validation(trained: dict, site: str):
    from glioseg.infer.predict import load_model, model_divisor
    from glioseg.preprocess.cache import open_cache
    from glioseg.train.loop import validate

    root, summary = trained["root"], trained["summary"]
    assert summary["val_pipeline"] == "whole volume"
    model, _ = load_model(root / "run" / "last")
    # the training loop's own validation function, with the loop's arguments
    val = validate(model, open_cache(trained["cache"][site]), device=torch.device("cpu"),
                   mode="whole", divisor=model_divisor(model))
    validation = [val[f"dice_{r}"] for r in ("WT", "TC", "ET")]
    if site == "target":  # the figure the training run logged for these cases
        assert validation == pytest.approx([summary[f"dice_{r}"] for r in ("WT", "TC", "ET")],
                                           abs=1e-6)
    # a model that predicts tumour somewhere, so that agreement is not 0 == 0
    assert max(validation) > 0.05, validation

    pred = root / f"pred_{site}"
    result = predict_dir([root / "run" / "last"], trained["raw"][site], pred,
                         PredictOptions(threads=2), progress=False)
    assert result.ok and len(result.predicted) == 2
    evaluate_folder(pred, trained["raw"][site], root / f"eval_{site}", progress=False)
    dice = json.loads((root / f"eval_{site}" / "summary.json").read_text())["metrics"]["dice"]
    for region, v in zip(("WT", "TC", "ET"), validation, strict=True):
        assert abs(dice[region]["mean"] - v) <= 0.01, (region, dice[region]["mean"], v)


def test_windows_are_kept_when_asked(tmp_path: Path):
    """``--mode sliding`` (or an explicit ROI) still runs windows; ``auto`` runs one forward
    of the whole box when it fits; the choice is a pure function of the box."""
    from glioseg.infer.predict import CasePredictor
    from glioseg.model.registry import ModelConfig, build_model

    model = build_model(ModelConfig(base_width=4, n_stages=3, max_width=8,
                                    patch_size=(16, 16, 16))).eval()
    auto = CasePredictor([(model, None)], PredictOptions())
    sliding = CasePredictor([(model, None)], PredictOptions(mode="sliding"))
    roi = CasePredictor([(model, None)], PredictOptions(roi=(8, 8, 8)))
    try:
        assert auto.window((37, 45, 30)) == (40, 48, 32)
        assert sliding.window((37, 45, 30)) == (16, 16, 16)
        assert roi.window((37, 45, 30)) == (8, 8, 8)
        huge = (2000, 2000, 2000)  # far above the memory budget: windows
        assert auto.window(huge) == (16, 16, 16)
    finally:
        for p in (auto, sliding, roi):
            p.close()
