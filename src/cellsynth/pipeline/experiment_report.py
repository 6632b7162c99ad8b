"""The HTML page of ``cellsynth experiment`` (and of ``cellsynth demo``, an experiment on the
bundled data): the settings' scores side by side, the paired differences in words, the
learning curve, validation curves, what the refiner changed and test images by outcome.
Shares the page's frame with :mod:`cellsynth.pipeline.report` (a run's page)."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.pipeline import layout
from cellsynth.pipeline.report import _figure, _outcome_pictures, _read_log, _table, _write_page

__all__ = ["write_experiment_report"]

def _describe(data: str, k: int | None, n_train: int) -> str:
    labels = n_train if k is None else k
    if data == "real":
        return f"{labels} annotated images only"
    source = "the simulation" if data == "simulated" else "refined simulated images"
    if k == 0:
        return f"{source} only, no annotations"
    return f"{source}, then fine-tuned on {labels} annotated images"


def _verdict(ci: list[float]) -> str:
    if ci[0] > 0:
        return "better, beyond resampling noise"
    if ci[1] < 0:
        return "worse, beyond resampling noise"
    return "not distinguishable from noise on this test set"


def _bar_chart(settings: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(settings)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for offset, (metric, label) in zip((-0.2, 0.2), (("f1_50", "F1 @ IoU 0.5"),
                                                     ("f1_avg", "F1avg (IoU 0.5-0.9)"))):
        means = [settings[n][metric]["mean"] for n in names]
        stds = [settings[n][metric]["std"] for n in names]
        bars = ax.bar(x + offset, means, 0.4, yerr=stds if any(stds) else None, capsize=3,
                      label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(x, names, fontsize=9)
    ax.set_ylim(0, 1)
    ax.set_ylabel("on the held-out images")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _figure(fig)


def _evaluated(out: Path, detector: str, test: str) -> list[tuple[str, np.ndarray, np.ndarray,
                                                                  np.ndarray]]:
    """(id, image, truth, predicted) of every test image for a detector's evaluation."""
    from cellsynth.io.datasets import load_dataset
    from cellsynth.io.images import read_labels
    from cellsynth.pipeline.experiment import evaluation_of

    folder = out / evaluation_of(detector) / layout.PREDICT / layout.LABELS
    found = []
    for sample in load_dataset(test, require_labels=True):
        image, truth = sample.read()
        found.append((sample.id, image, truth, read_labels(folder / f"{sample.id}.tif")))
    return found


def _outcomes(out: Path, results: dict[str, Any], names: list[str]) -> tuple[str, str, int]:
    """Overlays coloured by outcome for ``names`` (seed 0), a per-image count table and the
    number of annotated cells in the test images."""
    items, rows, n_cells = [], [], {}
    for name in names:
        setting = results["settings"][name]
        for image_id, image, truth, predicted in _evaluated(out, setting["detectors"][0],
                                                            results["test"]):
            items.append((f"<b>{html.escape(name)}</b>, {html.escape(image_id)}", image, truth,
                          predicted))
            rows.append([name, image_id, int(len(np.unique(truth)) - 1),
                         int(len(np.unique(predicted)) - 1)])
    pictures, counted = _outcome_pictures(items)
    for row, counts in zip(rows, counted):
        row += [counts["tp"], counts["fp"], counts["fn"]]
        n_cells[row[1]] = counts["tp"] + counts["fn"]
    table = _table(["setting", "image", "annotated cells", "predicted cells", "found",
                    "false", "missed"], rows)
    return pictures, table, sum(n_cells.values())


def _realism_reading(out: Path) -> str:
    path = out / layout.REALISM / layout.REALISM_METRICS
    if not path.exists():
        return ""
    data = json.loads(path.read_text())
    rows, readings = [], []
    for name, r in data.items():
        what = "simulated" if name.startswith("sim") else "refined"
        accuracy = r["c2st"]["accuracy"]
        rows.append([what, accuracy, r["swd"]["mean_x1e3"], r["histogram_w1"]])
        readings.append(f"<li>C2ST {accuracy:.2f}: a small classifier tells {what} crops from "
                        f"real ones {100 * accuracy:.0f} % of the time (50 % would mean it "
                        f"cannot tell them apart).</li>")
    return ("<h2>How realistic are the synthetic images?</h2>"
            + _table(["images", "C2ST accuracy", "SWD x1e3", "histogram W1"], rows)
            + "<ul>" + "".join(readings) + "<li>SWD and histogram W1: distances of patch and "
            "intensity statistics to the real images (lower is closer).</li></ul>")


def _validation_curves(out: Path, results: dict[str, Any]) -> str:
    entries = {}
    for name, setting in results["settings"].items():
        log = _read_log(out / setting["detectors"][0] / layout.LOG)
        points = [(e["step"], e["val_f1"]) for e in log if "val_f1" in e]
        if points:
            entries[name] = points
    if not entries:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    for name, points in entries.items():
        steps, f1 = zip(*points)
        ax.plot(steps, f1, marker="o", ms=3, label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation F1")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ("<h2>Training</h2><p class=note>F1 on each detector's validation data (the "
            "annotated images, or held-out synthetic images for zero-label detectors; never "
            "the held-out real images). A curve still rising at its end means more steps "
            "would help.</p>" + _figure(fig))


_NEXT_STEPS = """<h2>Next steps with your own images</h2><ol>
<li>Put a few of your images in a folder and annotate two of them (napari, QuPath or
Cellpose can paint labels; QuPath's exported GeoJSON is read as it is); keep their labels
in <code>labels/</code> with the same names (<code>cellsynth inspect FOLDER</code> checks the
layout).</li>
<li><code>cellsynth init FOLDER --pixel-size UM</code> writes a config for it: the simulator
preset closest to your stain (guessed from the images and said why; check it with
<code>cellsynth simulate --preset fluo|he|nissl|merker --n 8 --out preview</code>), the pixel
size and the measured recipe; <code>cellsynth run FOLDER.yaml --out runs/FOLDER</code> runs
it and segments your images.</li>
<li>Run the same comparison on your data: <code>cellsynth experiment CONFIG.yaml --out
DIR</code> (start from <code>configs/experiment-fluo.yaml</code>; use 3 seeds and longer
training than this demo's few minutes).</li>
<li>Segment everything with the best detector: <code>cellsynth predict --detector
DIR/detectors/NAME --images YOUR_IMAGES --out predictions</code>, then
<code>cellsynth export predictions --to geojson|cellpose|coco</code> to review the cells in
QuPath, Cellpose or napari.</li></ol>"""


def write_experiment_report(out: str | os.PathLike) -> Path:
    """Write ``OUT/report.html`` for a ``cellsynth experiment`` (or ``demo``) folder."""
    from cellsynth.io.datasets import load_dataset

    out = Path(out)
    results = json.loads((out / layout.RESULTS).read_text())
    settings = results["settings"]
    n_train = len(load_dataset(results["train"], require_labels=True))
    seeds = results["seeds"]
    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}"
    rows = []
    for name, s in settings.items():
        cells = [f"{s[m]['mean']:.3f}" + (f" ± {s[m]['std']:.3f}" if len(seeds) > 1 else "")
                 for m in ("f1_50", "f1_avg", "ap_50", "pq_50")]
        rows.append([name, _describe(s["data"], s["k"], n_train), *cells])
    best = max(settings, key=lambda n: settings[n]["f1_50"]["mean"])
    best_is = _describe(settings[best]["data"], settings[best]["k"], n_train)
    readings = []
    for pair, c in results["comparisons"].items():
        f1, avg = c["f1_50"], c["f1_avg"]
        readings.append(f"<li><b>{html.escape(pair)}</b>: F1@0.5 {f1['diff']:+.3f} (95 % "
                        f"interval {f1['ci95'][0]:+.3f} to {f1['ci95'][1]:+.3f} over "
                        f"{c['n_units']} held-out tiles): {_verdict(f1['ci95'])}; outlines "
                        f"(F1avg) {avg['diff']:+.3f} ({avg['ci95'][0]:+.3f} to "
                        f"{avg['ci95'][1]:+.3f}): {_verdict(avg['ci95'])}.</li>")
    zero = [n for n in settings if settings[n]["k"] == 0]
    best_zero = max(zero, key=lambda n: settings[n]["f1_50"]["mean"]) if zero else None
    baseline = [n for n in settings if settings[n]["data"] == "real"][:1]
    shown = list(dict.fromkeys([best, *([best_zero] if best_zero else []), *baseline]))
    overlays, counts, n_cells = _outcomes(out, results, shown)
    body = [
        f"<h1>{html.escape(results['name'])}</h1>",
        f"<p>Every detector below was scored on held-out annotated images ({n_cells} cells) "
        f"that no detector, threshold or checkpoint choice ever saw; {spread}. Best here: "
        f"<b>{html.escape(best)}</b> ({best_is}), F1@0.5 "
        f"{settings[best]['f1_50']['mean']:.3f}.</p>",
        _table(["setting", "trained on", "F1@0.5", "F1avg", "AP@0.5", "PQ@0.5"], rows),
        "<p class=note>F1@0.5: share of cells found and not invented, a predicted cell counting "
        "when it overlaps an annotated one by IoU &ge; 0.5. F1avg: the mean F1 over IoU "
        "0.5-0.9, i.e. how well outlines fit. AP = TP/(TP+FP+FN), PQ = panoptic quality.</p>",
        _bar_chart(settings),
        "<h2>Which differences are real?</h2><p class=note>Paired bootstrap: the held-out "
        "images, cut into tiles, are resampled 2,000 times and both settings scored on each "
        "resample" + (" (one seed: how much a difference moves between training runs is not "
                      "included; experiments use 3 or more)" if len(seeds) == 1 else "")
        + ".</p><ul>" + "".join(readings) + "</ul>" if readings else "",
        f"<h2>Where the detectors are right and wrong</h2>{overlays}",
        f"<h3>Cells per held-out image</h3>{counts}",
        _realism_reading(out),
        _validation_curves(out, results),
        _NEXT_STEPS,
        f"<h2>Configuration</h2><pre>{html.escape(json.dumps(results['config'], indent=1))}"
        f"</pre>",
    ]
    return _write_page(out, body)
