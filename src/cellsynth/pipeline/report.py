"""``cellsynth report RUN``: one self-contained HTML page (images embedded) about a run.

Sections appear when their stage has output: configuration; sample grids (simulated |
refined | real); refiner losses; realism metrics; detector training curves; prediction
overlays; instance metrics (F1/AP/PQ over IoU thresholds) when ground truth exists.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import CellsynthError
from cellsynth.io.files import atomic_path
from cellsynth.pipeline import layout

__all__ = ["write_report"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}
img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}.note{color:#666}
"""


def _png(array: np.ndarray) -> str:
    import imageio.v3 as iio

    data = iio.imwrite("<bytes>", array, extension=".png")
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _file_img(path: Path) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


def _figure(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _curves(entries: list[dict[str, Any]], keys: list[str], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    for key in keys:
        points = [(e["step"], e[key]) for e in entries if isinstance(e.get(key), (int, float))]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=key, lw=1)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=4)
    ax.grid(alpha=0.3)
    return _figure(fig)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _samples(run: Path) -> str:
    from cellsynth.io.datasets import load_dataset
    from cellsynth.viz import as_rgb8, contour_overlay, image_grid

    parts = []
    for name, title in ((layout.SIMULATE, "simulated"), (layout.REFINED, "refined")):
        if (run / name / "images").is_dir():
            samples = list(load_dataset(run / name))[:4]
            tiles = [contour_overlay(*s.read()) if name == layout.SIMULATE
                     else as_rgb8(s.read_image()) for s in samples]
            parts.append(f"<h3>{title}</h3>" + _png(image_grid(tiles, columns=4)))
    real = _real_images(run)
    if real:
        parts.append("<h3>real (unlabeled)</h3>" + _png(image_grid(real[:4], columns=4)))
    samples = sorted((run / layout.REFINER / layout.SAMPLES).glob("*.png"))
    if samples:
        parts.append(f"<h3>refiner samples at the last logged step ({samples[-1].stem})</h3>"
                     "<p class=note>simulated | refined | refined with label contours | "
                     "real crops</p>" + _file_img(samples[-1]))
    return "".join(parts)


def _real_images(run: Path) -> list[np.ndarray]:
    from cellsynth.io.datasets import load_dataset
    from cellsynth.io.sections import image_or_windows
    from cellsynth.viz import as_rgb8

    real = _real_options(run)
    folder = real.get("unlabeled")
    if not folder or not Path(folder).exists():
        return []
    # as the run reads them: real.channel alone; a whole section by a window of its tissue
    return [as_rgb8(np.asarray(image_or_windows(s.image_path, side=256, n=1,
                                                channel=real.get("channel"))[0])[:256, :256])
            for s in list(load_dataset(folder))[:4]]


def _realism(run: Path) -> str:
    path = run / layout.REALISM / layout.REALISM_METRICS
    if not path.exists():
        return ""
    data = json.loads(path.read_text())
    rows = [[name.replace("_", " "), r["c2st"]["accuracy"], r["c2st"]["sem"],
             r["swd"]["mean_x1e3"], r["histogram_w1"], r["spectrum_rms_log10"]]
            for name, r in data.items()]
    # (the realism stage compares with the test images where the run has them: say so, the
    # samples above show the unlabeled ones as "real")
    real = ("the held-out test images (real.test)" if _real_options(run).get("test")
            else "the unlabeled images (real.unlabeled)")
    return ("<h2>Realism</h2><p class=note>C2ST: held-out accuracy of a small CNN telling the "
            "sets apart (0.5 = indistinguishable). SWD: sliced Wasserstein distance of "
            f"Laplacian-pyramid patches (lower = closer). \"real\" here is {real}.</p>"
            + _table(["comparison", "C2ST acc", "± s.e.", "SWD x1e3", "hist W1", "spectrum RMS"],
                     rows))


def _metrics(run: Path) -> str:
    path = run / layout.EVALUATE / layout.METRICS
    if not path.exists():
        return ""
    m = json.loads(path.read_text())
    rows = [[f"{t:.2f}", m["precision"][i], m["recall"][i], m["f1"][i], m["ap"][i],
             m["pq"][i], m["mean_iou"][i]] for i, t in enumerate(m["thresholds"])]
    return (f"<h2>Instance metrics on the test images</h2><p>F1avg (IoU 0.5:0.9) "
            f"<b>{m['f1_avg']:.3f}</b>; {m['n_images']} images, {m['n_gt']} annotated and "
            f"{m['n_pred']} predicted cells.</p>"
            + _table(["IoU", "precision", "recall", "F1", "AP", "PQ", "mean IoU"], rows))


def _training(run: Path) -> str:
    parts = []
    for name in (layout.PRETRAIN, layout.FINETUNE, layout.SELFTRAIN):
        entries = _read_log(run / name / layout.LOG)
        if not entries:
            continue
        losses = [k for k in entries[0] if k not in ("step", "lr", "seconds")]
        parts.append(_curves(entries, ["loss"] + [k for k in losses if k != "loss"],
                             f"{name}: training losses"))
        if any("val_f1" in e for e in entries):
            parts.append(_curves(entries, ["val_f1", "val_f1_avg"], f"{name}: validation F1"))
        if name == layout.FINETUNE:
            parts.append(_soup(run))
    return "<h2>Detector training</h2>" + "".join(parts) if parts else ""


def _soup(run: Path) -> str:
    """soup > 1: which fine-tunings were averaged and how each validated."""
    info_path = run / layout.SOUP / layout.RUN_INFO
    if not info_path.is_file():
        return ""
    info = json.loads(info_path.read_text())
    runs = [f"{v:.3f}" for v in info.get("run_val_f1", []) if v is not None]
    validated = (f"; validation F1@0.5 of the runs {', '.join(runs)}, of their average "
                 f"{info['val_f1']:.3f}" if "val_f1" in info and runs else "")
    return (f"<p>The detector that predicts is the average of the weights of "
            f"{len(info['runs'])} fine-tunings ({_member_seeds(run, len(info['runs']))}; "
            f"<code>soup</code>), score threshold {info['score_thresh']}{validated}.</p>")


def _member_seeds(run: Path, n: int) -> str:
    """"seeds 0, 1000, 2000" of a soup's n fine-tunings (the run's seed + 1000 r)."""
    seed = _run_config(run).get("seed")
    if not isinstance(seed, int):
        return "seeds seed + 1000 r"
    return "seeds " + ", ".join(str(seed + 1000 * r) for r in range(n))


def _refiner(run: Path) -> str:
    entries = _read_log(run / layout.REFINER / layout.LOG)
    if not entries:
        return ""
    keys = [k for k, v in entries[-1].items()
            if k not in ("step", "seconds", "lr", "steps_per_s") and isinstance(v, (int, float))]
    return ("<h2>Refiner losses</h2>" + _curves(entries, keys, "refiner (S+U, SPADE)")
            + _refiner_choice(run))


def _refiner_choice(run: Path) -> str:
    """Which refiner step refined the data, when chosen by detector usefulness."""
    path = run / layout.REFINER_CHOICE / layout.CHOICE
    if not path.is_file():
        return ""
    choice = json.loads(path.read_text())
    rows = "".join(f"<tr><td>step {c['step']}</td><td>{c['val_f1']:.3f}</td></tr>"
                   for c in choice["candidates"])
    verdict = ("" if choice["refiner_helped"] else
               " <b>No refiner step beat the plain simulation here</b>: its data may teach "
               "the detector less than the simulation alone.")
    return (f"<p>Refined with step {choice['chosen_step']}, the step whose images taught a "
            f"quick detector most (validation F1@0.5 on the annotated validation images; "
            f"plain simulation {choice['simulation_val_f1']:.3f}).{verdict}</p>"
            f"<table><tr><th>refiner</th><th>validation F1@0.5</th></tr>{rows}</table>")


def _fitted(run: Path) -> str:
    """The simulator fitted to the real images (the `fit` stage): preview and numbers."""
    fit = run / layout.FIT
    preview = fit / (Path(layout.FITTED).stem + "-preview.png")
    if not preview.is_file():
        return ""
    table = fit / layout.FIT_TABLE
    return ("<h2>Simulator fitted to the real images</h2><p class=note>real | fitted "
            "simulation | base preset; the simulation of this run uses the fitted one</p>"
            + _file_img(preview)
            + (f"<pre>{html.escape(table.read_text())}</pre>" if table.is_file() else ""))


def _pseudo_labels(run: Path) -> str:
    """What self-training learned from: the fine-tuned detector's labels of unlabeled images."""
    folder = run / layout.PSEUDO
    if not (folder / layout.LABELS).is_dir():
        return ""
    from cellsynth.io.datasets import load_dataset
    from cellsynth.viz import contour_overlay, image_grid

    samples = list(load_dataset(folder, require_labels=True))
    tiles, cells = [], 0
    for sample in samples:
        image, labels = sample.read()
        cells += len(np.unique(labels[labels > 0]))
        if len(tiles) < 4:
            tiles.append(contour_overlay(image, labels))
    return (f"<h2>Pseudo labels (self-training)</h2><p>The fine-tuned detector labelled "
            f"{len(samples)} unannotated images ({cells} cells); the selftrain detector "
            f"learned from them beside the annotated ones. Check that they look right.</p>"
            + _png(image_grid(tiles, columns=4)))


def _predictions(run: Path) -> str:
    overlays = sorted((run / layout.PREDICT / layout.OVERLAYS).glob("*.png"))[:4]
    if not overlays:
        return ""
    scored = _scored_test_images(run)
    if scored:  # annotated test images: where the detector is right and wrong
        pictures, _ = _outcome_pictures([(html.escape(i), *rest) for i, *rest in scored])
        return "<h2>Predictions on real images</h2>" + _prediction_note(run) + pictures
    return ("<h2>Predictions on real images</h2>" + _prediction_note(run)
            + "".join(f"<p class=note>{html.escape(p.stem)}</p>{_file_img(p)}" for p in overlays))


def _run_config(run: Path) -> dict[str, Any]:
    """The run's saved config as a mapping ({} if none)."""
    from cellsynth.config import load_yaml

    path = run / layout.CONFIG
    return load_yaml(path) if path.is_file() else {}


def _real_options(run: Path) -> dict[str, Any]:
    """The ``real:`` section of the run's saved config ({} if none)."""
    return _run_config(run).get("real") or {}


def _scored_test_images(run: Path, limit: int = 4
                        ) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(id, image, truth, predicted) of up to ``limit`` test images a run evaluated (the
    image as the run read it: ``real.channel`` alone), or [] where it evaluated none. An
    image whose cells were outlined in regions (QuPath) gives each region's box as
    ``<id>@<k>``, the part evaluate scored: the cells outside were never annotated, and
    drawn whole they showed every right detection there as false."""
    from cellsynth.io.datasets import load_dataset
    from cellsynth.io.images import read_labels
    from cellsynth.io.sections import open_image, reads_lazily

    if not (run / layout.EVALUATE / layout.METRICS).is_file():
        return []
    real = _real_options(run)
    if not real.get("test") or not Path(real["test"]).is_dir():
        return []
    found = []
    for sample in load_dataset(real["test"], require_labels=True):
        predicted = run / layout.PREDICT / layout.LABELS / f"{sample.id}.tif"
        if len(found) >= limit or reads_lazily(sample.image_path) or not predicted.is_file():
            continue  # (a whole section is no picture)
        image = np.asarray(open_image(sample.image_path, channel=real.get("channel")))
        truth, labels = sample.read_labels(), read_labels(predicted)
        boxes = sample.annotated_boxes(truth.shape)
        for k, box in enumerate(boxes or [(slice(None), slice(None))]):
            name = f"{sample.id}@{k}" if boxes else sample.id
            found.append((name, image[box], truth[box], labels[box]))
    return found[:limit]


def _swatch(key: str) -> str:
    from cellsynth.viz import OUTCOME_COLORS

    return f'<span style="color:rgb{OUTCOME_COLORS[key]};font-weight:bold">&#9632;</span>'


def _outcome_pictures(items: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]
                      ) -> tuple[str, list[dict[str, int]]]:
    """A legend and, per (title, image, truth, predicted), its outlines coloured by outcome
    at IoU 0.5 with the counts; and the counts."""
    from cellsynth.viz import outcome_overlay

    pictures, counted = [], []
    for title, image, truth, predicted in items:
        overlay, counts = outcome_overlay(image, truth, predicted)
        counted.append(counts)
        pictures.append(f"<p>{title}: {counts['tp']} found {_swatch('tp')}, {counts['fp']} "
                        f"false {_swatch('fp')}, {counts['fn']} missed {_swatch('fn')}</p>"
                        + _png(overlay))
    legend = (f"<p class=note>Outlines: {_swatch('tp')} predicted cell matching an annotated "
              f"one (IoU &ge; 0.5), {_swatch('fp')} predicted cell with no match, "
              f"{_swatch('fn')} annotated cell no prediction matched.</p>")
    return legend + "".join(pictures), counted


def _prediction_note(run: Path) -> str:
    """How the run predicted (TTA, the faint cut), as the command that predicts new images
    the same way."""
    path = run / layout.PREDICT / layout.META
    if not path.is_file():
        return ""
    from cellsynth.pipeline.config import PredictOptions
    from cellsynth.segment.predict import CPN_NMS

    meta = json.loads(path.read_text())
    command = (f"cellsynth predict --detector {shlex.quote(meta['model'])} --images "
               f"YOUR_IMAGES --out "
               f"predictions" + (" --tta" if meta.get("tta") else ""))
    if meta.get("nms_thresh") not in (None, CPN_NMS):  # set by predict.nms
        command += f" --nms {meta['nms_thresh']:g}"
    options = _run_config(run).get("predict") or {}
    if options.get("count_threshold") and meta.get("score_thresh") is not None:
        # (the threshold counted on the unlabeled images: not the detector's own)
        command += f" --score-thresh {meta['score_thresh']:g}"
    defaults = PredictOptions()
    for key, flag in (("tile", "--tile"), ("overlap", "--overlap"),
                      ("empty_contrast", "--empty-contrast"), ("precision", "--precision")):
        if options.get(key) is not None and options[key] != getattr(defaults, key):
            command += f" {flag} {options[key]:g}" if isinstance(options[key], float) \
                else f" {flag} {options[key]}"
    text = ""
    if meta.get("score_thresh") is not None:  # (what was used, and how it was computed)
        asked = meta.get("precision_asked")
        text = (f"Predicted at score threshold {meta['score_thresh']:g} in "
                f"{meta.get('precision', 'fp32')}"
                + (f" ({asked} was asked and fell back)" if asked else "") + ". ")
    real = _real_options(run)
    if real.get("channel") is not None:  # (the detectors record it: predict picks it itself)
        text += (f"Every stage read channel {real['channel']} of the multi-channel images "
                 f"(real.channel); the detectors pick it from new ones by themselves. ")
    px = real.get("pixel_size_um")
    if px:  # (files that state none are otherwise taken at the detector's working size)
        command += f" --pixel-size {px:g}"
        text += (f"--pixel-size is the run's real images' ({px:g} um/px), and it overrides "
                 f"what image files state: give your images' own, or drop it where their "
                 f"files state theirs. ")
    faint = meta.get("faint")
    if faint:
        command += (f" --faint-from {shlex.quote(meta['faint_from'])} "
                    f"--faint-percentile {faint['percentile']:g}")
        text += (f"{meta.get('n_faint_dropped', 0)} detection(s) fainter than the "
                 f"{faint['percentile']:g}th percentile of the {faint['n_objects']} annotated "
                 f"cells' mean {'stain' if faint['dark'] else 'intensity'} "
                 f"({faint['cut']:.3f}) were dropped. ")
    return (f"<p class=note>{html.escape(text)}New images predicted the same way: "
            f"<code>{html.escape(command)}</code></p>")


def _stage_time(entry: dict[str, Any]) -> str:
    """The time the runs that worked on a stage spent on it, all together (a stage resumed
    after a kill: the time before it too)."""
    from cellsynth.pipeline.run import duration

    if "seconds" not in entry or not (entry.get("done") or entry["seconds"]):
        return ""  # (begun, nothing recorded yet)
    runs = entry.get("runs", 1)
    return duration(entry["seconds"]) + (f" ({runs} runs)" if runs > 1 else "")


def _stage_seeds_said(config: str) -> str:
    """The resolved config with each stage's ``seed:`` marked as unused: every stage takes
    the run's (a run at seed 1 showed its refiner and detectors at "seed: 0")."""
    import re

    run_seed = re.search(r"^seed: (\d+)\s*$", config, re.M)
    if run_seed is None:
        return config
    note = f"   # not used: every stage takes the run's seed ({run_seed.group(1)})"
    return re.sub(r"^(  seed: \d+)\s*$", lambda m: m.group(1) + note, config, flags=re.M)


def write_report(run: str | os.PathLike) -> Path:
    """Write ``RUN/report.html`` from whatever the run's stages produced; return its path."""
    run = Path(run)
    if not (run / layout.STATE).is_file():  # (an image folder, a prediction, a typo)
        raise CellsynthError(f"{run}: not a `cellsynth run` folder (no {layout.STATE}); report "
                             f"writes the page of a run" + ("" if run.is_dir() else
                                                            " (no such folder)"))
    config = _stage_seeds_said(
        (run / layout.CONFIG).read_text() if (run / layout.CONFIG).exists() else "")
    state_path = run / layout.STATE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    stage_rows = [[name, ("done" if s.get("done") else "done for an earlier configuration; "
                          "runs again" if s.get("outdated") else "not finished")
                   + (f" (reused from {s['reused_from']})" if s.get("reused_from") else ""),
                   _stage_time(s)]
                  for name, s in state.items() if name != layout.REPORT_STAGE]  # this page
    name = str(_run_config(run).get("name") or "run")
    # the config's name and the run folder's, where a name was given ("run": the default)
    title = run.name if name in ("run", run.name) else f"{name} ({run.name})"
    body = [f"<h1>cellsynth report: {html.escape(title)}</h1>",
            _table(["stage", "status", "time"], stage_rows) if stage_rows else "",
            _fitted(run), "<h2>Samples</h2>" + _samples(run), _refiner(run), _realism(run),
            _training(run), _pseudo_labels(run), _predictions(run),
            _earlier(state, layout.EVALUATE) + _metrics(run),
            f"<h2>Configuration</h2><pre>{html.escape(config)}</pre>"]
    return _write_page(run, body)


def _earlier(state: dict[str, Any], stage: str) -> str:
    """A warning above what ``stage`` wrote where it was done for an earlier configuration
    (the run was changed and stopped before it ran again), else ""."""
    entry = state.get(stage) or {}
    if entry.get("done") or not entry:
        return ""
    why = ("done for an earlier configuration" if entry.get("outdated")
           else "not finished in this configuration")
    return (f'<p class="warn"><b>The {html.escape(stage)} stage is {why}: the numbers below '
            f"are from before, not of this configuration.</b> Continue the run to update "
            f"them.</p>")


def _write_page(folder: Path, body: list[str]) -> Path:
    """``folder/report.html``: one self-contained page of the given sections, atomically."""
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>cellsynth report"
            f"</title><style>{_STYLE}</style></head><body>{''.join(body)}</body></html>")
    path = folder / layout.REPORT
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path
