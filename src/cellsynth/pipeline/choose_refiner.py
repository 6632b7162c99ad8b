"""Choose the refiner snapshot whose images teach a detector the most ("detector usefulness").

A GAN's last step is not its best, and neither realism (C2ST) nor label fidelity says what a
refined set is for: training a detector. For each candidate, the last ``candidates``
snapshots of a refiner run (``RUN/snapshots/step_NNNNNN.pt``, written every
``checkpoint_every`` steps), the same ``images`` simulated images are refined, the same
quick detector (same seed, ``steps`` steps of ``crop``² crops) is trained on them, and it is
scored on annotated *validation* images (never the test split). The snapshot with the best
validation F1@0.5 is chosen (ties: the later step). The plain simulation is scored the same
way as a reference, so ``choice.json`` also says whether refinement helped at all here.

The quick detectors are small and short (defaults: tiny_u22, 150 steps of 128² crops,
~30 s each on 2 CPU cores), so their F1 is noisy: the same seed and images for every
candidate make the comparison paired, not exact.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellsynth.config import to_dict
from cellsynth.errors import CellsynthError
from cellsynth.io.files import write_json
from cellsynth.pipeline import layout

__all__ = ["ChooseRefinerOptions", "snapshots", "choose_refiner", "chosen_snapshot"]

logger = logging.getLogger("cellsynth")

_SNAPSHOT = re.compile(r"step_(\d+)\.pt$")


@dataclass(frozen=True)
class ChooseRefinerOptions:
    enabled: bool = False      # off: the refiner's last step refines the data
    candidates: int = 4        # the last N snapshots compete
    images: int = 48           # simulated images refined per candidate (the first N)
    steps: int = 150           # quick detector: steps, crop, model, learning rate
    crop: int = 128
    model: str = "tiny_u22"
    lr: float = 2e-3

    def __post_init__(self) -> None:
        for name in ("candidates", "images", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"choose_refiner.{name} must be >= 1, got "
                                 f"{getattr(self, name)}")
        if self.crop < 32 or self.crop % 32:
            raise ValueError(f"choose_refiner.crop must be a multiple of 32, got {self.crop}")


def _step(path: Path) -> int:
    return int(_SNAPSHOT.search(path.name).group(1))


def snapshots(refiner_run: str | Path) -> list[Path]:
    """The generator snapshots of a refiner run, by step."""
    folder = Path(refiner_run) / layout.SNAPSHOTS
    return sorted((p for p in folder.glob("step_*.pt") if _SNAPSHOT.search(p.name)), key=_step)


def _subset(sim_dir: Path, n: int, out: Path) -> Path:
    """The first ``n`` images of a simulated dataset (with labels, class maps, meta.json)."""
    if out.exists():
        shutil.rmtree(out)
    ids = sorted(p.stem for p in (sim_dir / "images").iterdir())[:n]
    for part in ("images", "labels", "classes"):
        if not (sim_dir / part).is_dir():
            continue
        (out / part).mkdir(parents=True)
        for path in (sim_dir / part).iterdir():
            if path.stem in ids:
                shutil.copy2(path, out / part / path.name)
    if (sim_dir / layout.META).is_file():
        shutil.copy2(sim_dir / layout.META, out / layout.META)
    return out


def choose_refiner(refiner_run: str | Path, sim_dir: str | Path, val_dir: str | Path,
                   out: str | Path, options: ChooseRefinerOptions = ChooseRefinerOptions(),
                   *, seed: int = 0, device: str = "cpu", precision: str = "auto",
                   progress: bool = False) -> dict[str, Any]:
    """Score the last snapshots of ``refiner_run`` (and the plain simulation) by the
    validation F1 of a quick detector trained on what each makes; write ``OUT/choice.json``
    and return it. ``val_dir``: annotated real images (the run's validation role)."""
    from cellsynth import refine
    from cellsynth.segment.trainer import TrainConfig, train

    refiner_run, sim_dir, out = Path(refiner_run), Path(sim_dir), Path(out)
    candidates = snapshots(refiner_run)[-options.candidates:]
    if not candidates:
        raise CellsynthError(f"{refiner_run}: no refiner snapshots ({layout.SNAPSHOTS}/); it "
                             f"was trained before they were written: train it again, or set "
                             f"choose_refiner: {{enabled: false}}")
    out.mkdir(parents=True, exist_ok=True)
    subset = _subset(sim_dir, options.images, out / "simulation" / "data")
    quick = TrainConfig(model=options.model, steps=options.steps, crop=options.crop, batch=4,
                        lr=options.lr, warmup=min(10, options.steps), seed=seed,
                        device=device, precision=precision,
                        val_every=max(1, options.steps // 3),
                        checkpoint_every=options.steps)

    def usefulness(name: str, data: Path) -> float:
        detector = out / name / "detector"
        summary = train(quick, [data], detector, val=val_dir, force=True, progress=False)
        for weights in (layout.LAST, layout.BEST):  # only the numbers are kept
            (detector / weights).unlink(missing_ok=True)
        return float(summary["best_val_f1"])

    scored = []
    reference = usefulness("simulation", subset)
    logger.info("choose-refiner: plain simulation, validation F1@0.5 %.3f", reference)
    for snapshot in candidates:
        name = snapshot.stem
        data = out / name / "data"
        refine.refine_dataset(snapshot, subset, data, device=device, force=True, seed=seed,
                              precision=precision, progress=progress)
        f1 = usefulness(name, data)
        shutil.rmtree(data)
        scored.append({"snapshot": snapshot.name, "step": _step(snapshot), "val_f1": f1})
        logger.info("choose-refiner: step %d, validation F1@0.5 %.3f", _step(snapshot), f1)
    best = max(scored, key=lambda c: (c["val_f1"], c["step"]))
    choice = {"candidates": scored, "simulation_val_f1": reference,
              "chosen": best["snapshot"], "chosen_step": best["step"],
              "refiner_helped": best["val_f1"] > reference,
              "options": to_dict(options),
              "val": str(Path(val_dir).resolve()), "seed": seed}
    shutil.rmtree(out / "simulation" / "data")
    write_json(out / layout.CHOICE, choice)
    if not choice["refiner_helped"]:
        logger.warning("choose-refiner: no refiner step beat the plain simulation on the "
                       "validation images (%.3f vs %.3f); the refined data may teach less",
                       best["val_f1"], reference)
    return choice


def chosen_snapshot(choice_dir: str | Path, refiner_run: str | Path) -> Path:
    """The snapshot of ``refiner_run`` that a REFINER_CHOICE folder chose."""
    path = Path(choice_dir) / layout.CHOICE
    try:
        return Path(refiner_run) / layout.SNAPSHOTS / json.loads(path.read_text())["chosen"]
    except (OSError, ValueError, KeyError) as err:
        raise CellsynthError(f"{path}: cannot read the refiner choice ({err}); run the "
                             f"{layout.REFINER_CHOICE} stage again") from err
