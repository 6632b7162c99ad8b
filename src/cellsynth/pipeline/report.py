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
from pathlib import Path
from typing import Any

import numpy as np

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
    import yaml

    from cellsynth.io.datasets import load_dataset
    from cellsynth.viz import as_rgb8

    config_path = run / layout.CONFIG
    if not config_path.exists():
        return []
    folder = (yaml.safe_load(config_path.read_text()).get("real") or {}).get("unlabeled")
    if not folder or not Path(folder).exists():
        return []
    return [as_rgb8(s.read_image()[:256, :256]) for s in list(load_dataset(folder))[:4]]


def _realism(run: Path) -> str:
    path = run / layout.REALISM / layout.REALISM_METRICS
    if not path.exists():
        return ""
    data = json.loads(path.read_text())
    rows = [[name.replace("_", " "), r["c2st"]["accuracy"], r["c2st"]["sem"],
             r["swd"]["mean_x1e3"], r["histogram_w1"], r["spectrum_rms_log10"]]
            for name, r in data.items()]
    return ("<h2>Realism</h2><p class=note>C2ST: held-out accuracy of a small CNN telling the "
            "sets apart (0.5 = indistinguishable). SWD: sliced Wasserstein distance of "
            "Laplacian-pyramid patches (lower = closer).</p>"
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
    for name in (layout.PRETRAIN, layout.FINETUNE):
        entries = _read_log(run / name / layout.LOG)
        if not entries:
            continue
        losses = [k for k in entries[0] if k not in ("step", "lr", "seconds")]
        parts.append(_curves(entries, ["loss"] + [k for k in losses if k != "loss"],
                             f"{name}: training losses"))
        if any("val_f1" in e for e in entries):
            parts.append(_curves(entries, ["val_f1", "val_f1_avg"], f"{name}: validation F1"))
    return "<h2>Detector training</h2>" + "".join(parts) if parts else ""


def _refiner(run: Path) -> str:
    entries = _read_log(run / layout.REFINER / layout.LOG)
    if not entries:
        return ""
    keys = [k for k, v in entries[-1].items()
            if k not in ("step", "seconds", "lr", "steps_per_s") and isinstance(v, (int, float))]
    return "<h2>Refiner losses</h2>" + _curves(entries, keys, "refiner (S+U, SPADE)")


def _predictions(run: Path) -> str:
    overlays = sorted((run / layout.PREDICT / layout.OVERLAYS).glob("*.png"))[:4]
    if not overlays:
        return ""
    return ("<h2>Predictions on real images</h2>"
            + "".join(f"<p class=note>{html.escape(p.stem)}</p>{_file_img(p)}" for p in overlays))


def write_report(run: str | os.PathLike) -> Path:
    """Write ``RUN/report.html`` from whatever the run's stages produced; return its path."""
    run = Path(run)
    config = (run / layout.CONFIG).read_text() if (run / layout.CONFIG).exists() else ""
    state_path = run / layout.STATE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    stage_rows = [[name, "done" if s.get("done") else "not finished", s.get("seconds", "")]
                  for name, s in state.items() if name != layout.REPORT_STAGE]  # this page
    body = [f"<h1>cellsynth report: {html.escape(run.name)}</h1>",
            _table(["stage", "status", "seconds"], stage_rows) if stage_rows else "",
            "<h2>Samples</h2>" + _samples(run), _refiner(run), _realism(run), _training(run),
            _predictions(run), _metrics(run),
            f"<h2>Configuration</h2><pre>{html.escape(config)}</pre>"]
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>cellsynth report"
            f"</title><style>{_STYLE}</style></head><body>{''.join(body)}</body></html>")
    path = run / layout.REPORT
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path
