"""``glioseg report``: a fake run folder with every kind of content -> report.html / report.md."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from glioseg.cli import app
from glioseg.report.html import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def _png(path: Path, colour: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.imshow(np.linspace(0, 1, 64).reshape(8, 8), cmap="gray")
    ax.add_patch(plt.Rectangle((2, 2), 3, 3, color=colour, alpha=0.6))
    ax.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)


def make_run(root: Path) -> Path:
    """A run folder holding one file of every kind the report knows, and a sub-folder."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text("model:\n  arch: unet3d\n  base_width: 8\ntrain:\n"
                                      "  steps: 40\n  lr: 0.001\n")
    (root / "card.json").write_text(json.dumps({
        "arch": "unet3d", "model": {"base_width": 8, "n_stages": 4},
        "modalities": ["t1", "t1ce", "t2", "flair"], "label_scheme": "brats2021",
        "training": {"steps": 40, "seed": 0}}))
    with (root / "metrics.jsonl").open("w") as fh:
        for step in range(0, 40, 5):
            fh.write(json.dumps({"step": step, "loss": 1.0 / (1 + step), "lr": 1e-3}) + "\n")
            if step % 10 == 0:
                fh.write(json.dumps({"step": step, "val_dice_WT": 0.5 + step / 100,
                                     "val_dice_TC": 0.4 + step / 120}) + "\n")
        fh.write("{truncated\n")  # a run killed mid-write
    ev = root / "eval"
    ev.mkdir()
    (ev / "summary.json").write_text(json.dumps({
        "WT": {"dice": {"mean": 0.8123, "std": 0.05}, "hd95": {"mean": 4.2, "std": 1.1}},
        "TC": {"dice": {"mean": 0.7011, "std": 0.08}, "hd95": {"mean": 6.0, "std": 2.0}},
        "ET": {"dice": {"mean": 0.6502, "std": 0.1}, "hd95": {"mean": 7.5, "std": 3.0}}}))
    (ev / "per_case.csv").write_text("case_id,dice_WT,dice_TC,dice_ET\n"
                                     "BraTS2021_00000,0.81,0.70,0.64\n"
                                     "BraTS2021_00001,0.83,0.71,0.66\n")
    _png(ev / "overlay_BraTS2021_00000.png", "red", "overlay")
    (root / "study.md").write_text("## Study: few labelled cases\n\n| cases | Dice WT |\n"
                                   "|---|---|\n| 4 | 0.61 |\n| 16 | 0.79 |\n")
    sh = root / "shift"
    _png(sh / "shift_pca.png", "blue", "pca")
    (sh / "shift.json").write_text(json.dumps({
        "format": "glioseg-shift/1",
        "verdict": "target differs from source (moderate shift): MMD^2 = 0.314, p < 0.001",
        "advice": ["Evaluate on a few labelled target cases."],
        "source": {"dir": "/data/src", "n_cases": 8}, "target": {"dir": "/data/tgt",
                                                                 "n_cases": 8},
        "tests": {"zscored": {"overall": {"mmd2": 0.314, "p_value": 0.000999, "null_q95": 0.08,
                                          "bandwidth": 8.1, "n_source": 8, "n_target": 8}}},
        "feature_shifts": [{"feature": "flair_zscored_q25", "shift_sd": -1.76}],
        "figures": ["shift_pca.png"]}))
    (root / "timings.json").write_text(json.dumps({"train_s": 123.4, "predict_s_per_case": 9.1}))
    (root / "hardware.json").write_text(json.dumps({"cpu": "test CPU", "threads": 2}))
    demo = root / "demo" / "run_a"
    demo.mkdir(parents=True)
    (demo / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "loss": 2.0 - e / 10})
                                                + "\n" for e in range(5)))
    run_b = root / "demo" / "run_b"
    run_b.mkdir()
    (run_b / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    _png(run_b / "curves.png", "green", "curves of run_b")  # as `glioseg plot` writes
    (root / "demo" / "empty_folder").mkdir()
    (root / "weights.safetensors").write_bytes(b"\0" * 16)
    return root


def _img_sources(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)


def test_report_sections_images_and_markdown(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    run = make_run(tmp_path / "run")
    result = CliRunner().invoke(app, ["report", str(run), "--title", "Test run"])
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    for text in ("Test run", "Model card", "Configuration", "Training curves",
                 "Evaluation summary", "Per-case metrics", "Study: few labelled cases",
                 "Domain shift", "MMD^2 = 0.314", "Timings", "Hardware", "test CPU",
                 "Machine that rendered this report", "demo/run_a", "BraTS2021_00001",
                 "0.8123", "Other files not rendered: 1 .safetensors"):
        assert text in page, text
    assert "<h5>Study: few labelled cases</h5>" in page  # headings pushed under the section
    assert "<td>val_dice_WT</td><td>0.8</td>" in page  # latest value although not last record
    assert "demo/empty_folder" not in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    # matrix table of the nested summary: one row per region, flattened metric columns
    assert re.search(r"<th>dice\.mean</th>.*<td>WT</td><td>0\.8123</td>", page, re.S)
    srcs = _img_sources(page)
    # curves (root, demo/run_a drawn; demo/run_b's own curves.png), overlay, shift_pca: all
    # embedded, all decodable PNGs
    assert len(srcs) == 5 and "demo/run_b/curves.png" in page
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1])
        assert data[:8] == PNG_MAGIC
        assert mpimg.imread(io.BytesIO(data), format="png").shape[0] > 50
    md = (run / "report.md").read_text()
    assert "| WT | 0.8123 |" in md and "> **target differs from source" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 5 and all((run / p).is_file() for p in links)
    assert sorted(p.name for p in (run / "report_figures").iterdir()) == [
        "demo_run_a_metrics.png", "root_metrics.png"]
    assert not list(run.rglob(".*.tmp"))


def test_report_robust_to_empty_and_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    html_path, _ = write_report(empty)
    assert "Environment" in html_path.read_text()
    (empty / "card.json").write_text("{not json")
    (empty / "metrics.jsonl").write_text("")
    page = write_report(empty)[0].read_text()
    assert "card.json: unreadable" in page and "metrics.jsonl: no records" in page
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert bad.exit_code == 1 and "no such folder" in bad.output


def _chromium(args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install "
                    "-y chromium); needed to render the HTML report headless")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    run = make_run(tmp_path / "run")
    html_path, _ = write_report(run)
    shot = tmp_path / "shot.png"
    res = _chromium([f"--screenshot={shot}", "--window-size=1200,2000",
                     html_path.resolve().as_uri()])
    assert shot.is_file(), res.stderr[-2000:]
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 0.05  # not a blank page
    assert (pixels.mean(axis=2) < 0.3).mean() > 0.002  # dark text/figure pixels exist
    # Ask the browser itself whether every <img> decoded: a copy of the page with a probe that
    # writes the count of broken images into the DOM, read back with --dump-dom.
    probe = ("<script>window.addEventListener('load',()=>{const im=[...document.images];"
             "document.body.setAttribute('data-images',im.length);document.body.setAttribute("
             "'data-broken',im.filter(i=>!(i.complete&&i.naturalWidth>0)).length)});</script>")
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(html_path.read_text().replace("</body>", probe + "</body>"))
    res = _chromium(["--dump-dom", "--virtual-time-budget=5000", probe_page.as_uri()])
    m = re.search(r'data-images="(\d+)" data-broken="(\d+)"', res.stdout)
    assert m, res.stdout[:500] + res.stderr[-1000:]
    assert int(m.group(1)) == 5 and int(m.group(2)) == 0


def test_a_sub_folder_on_the_root_machine_gets_one_line(tmp_path: Path) -> None:
    root = tmp_path / "run"
    same, other = root / "a", root / "b"
    for folder, cpu in ((root, "CPU one"), (same, "CPU one"), (other, "CPU two")):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hardware.json").write_text(json.dumps({"cpu": cpu, "logical cpus": 2}))
    page = write_report(root)[0].read_text()
    assert page.count("<td>CPU one</td>") == 1  # the root's table only
    assert page.count("<td>CPU two</td>") == 1  # a machine of its own keeps its table
    assert page.count("The same machine as the overview") == 1


GOLDEN = Path(__file__).parent / "golden" / "report"
"""``pinned.html`` and ``pinned.md``: the report of ``make_run`` as rendered by ``_pinned``.
After a deliberate change of the report's output, regenerate them with
``_pinned(make_run(folder))`` and review the diff."""


def _pinned(run: Path) -> tuple[str, str]:
    """(HTML, Markdown) of ``run`` with what depends on the machine held fixed: a fixed title
    and time stamp, the Environment section's table replaced by a fixed one, and each embedded
    PNG named (``file:<path>`` for a figure of the folder, ``drawn`` for one drawn by the
    report, whose bytes depend on matplotlib's version)."""
    from glioseg.report.html import build_report, kv_table, render_html, render_markdown

    title, sections, generated = build_report(run, "pinned run")
    assert sections[-1].title == "Environment"
    sections[-1].blocks = [kv_table({"python": "3.x", "cpu": "pinned CPU"})]
    names = {base64.b64encode(p.read_bytes()).decode("ascii"): f"file:{p.relative_to(run)}"
             for p in run.rglob("*.png")}
    page = re.sub(r"data:image/png;base64,([A-Za-z0-9+/=]+)",
                  lambda m: f"data:image/png;{names.get(m.group(1), 'drawn')}",
                  render_html(title, sections, "2026-01-01 00:00 UTC"))
    return page, render_markdown(title, sections, "2026-01-01 00:00 UTC")


def test_report_output_is_pinned(tmp_path: Path) -> None:
    """The whole report.html and report.md of a folder holding every kind of content, as
    rendered when the report was one module: a reorganisation keeps them byte for byte."""
    run = make_run(tmp_path / "run")
    (run / ".report.json").write_text(json.dumps({
        "skip": ["weights.safetensors"], "order": ["shift", "eval"],
        "titles": {"shift": "Shift check"}}))
    (run / "eval" / "hardware.json").write_text((run / "hardware.json").read_text())
    (run / "eval" / "broken.json").write_text("{not json")
    (run / "eval" / "results.json").write_text(json.dumps(
        [{"cases": n, "dice": {"WT": 0.5 + n / 100}} for n in (2, 4, 8)]))
    (run / "eval" / "notes.md").write_text("# Notes\n\n<b>raw</b> [x](javascript:y)\n")
    page, md = _pinned(run)
    assert page.count("data:image/png;drawn") == 2  # root and demo/run_a curves
    assert page.count("data:image/png;file:") == 3
    assert page == (GOLDEN / "pinned.html").read_text(encoding="utf-8")
    assert md == (GOLDEN / "pinned.md").read_text(encoding="utf-8")
