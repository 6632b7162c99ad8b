"""The ``cellsynth`` command's options: one argparse subparser per command, each naming
the function of :mod:`cellsynth.cli.commands` that runs it; shared flags mean the same
everywhere.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cellsynth import __version__
from cellsynth.cli import commands


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (no usage dump), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind: type, minimum: float, strict: bool, what: str):
    """An argparse type: ``kind(text)`` that must be > (strict) or >= ``minimum``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value > minimum if strict else value >= minimum):  # also rejects NaN
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


_positive_int = _number(int, 1, False, "a positive integer")
_nonnegative_int = _number(int, 0, False, "an integer >= 0")
_positive_float = _number(float, 0.0, True, "a positive number")


def _score(text: str) -> float:
    value = _number(float, 0.0, False, "a score between 0 and 1")(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a score between 0 and 1, got {value}")
    return value


def _part(text: str) -> tuple[int, int]:
    """``I/N`` (1 <= I <= N) as (I - 1, N)."""
    i, _, n = text.partition("/")
    if not (i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n)):
        raise argparse.ArgumentTypeError(f"expected I/N with 1 <= I <= N (e.g. 2/8), got "
                                         f"{text!r}")
    return int(i) - 1, int(n)


def _add_precision(p: argparse.ArgumentParser, default: str | None = None, *,
                   int8: bool = False) -> None:
    p.add_argument("--precision", choices=("auto", "bf16", "fp32") + (("int8",) if int8 else ()),
                   default=default,
                   help="bf16 autocast or fp32; auto (default): bf16 only where this machine "
                        "computes it natively (env CELLSYNTH_PRECISION overrides auto)"
                        + ("; int8: the network quantised after training, calibrated on the "
                           "images (CPU; ~1.5x faster than fp32 on AVX2, outlines differ "
                           "slightly)" if int8 else ""))


def _add_channel(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--channel", type=_nonnegative_int, help=text)


def _add_device(p: argparse.ArgumentParser, default: str | None = "cpu") -> None:
    p.add_argument("--device", default=default,
                   help="cpu, cuda or cuda:N" + ("" if default else " (default: the config's)"))


def _add_output_flags(p: argparse.ArgumentParser, *, resume: bool = False,
                      force: bool = True) -> None:
    """The flags every command that writes a folder shares: --resume, --force, --quiet."""
    if resume:
        p.add_argument("--resume", action="store_true",
                       help="continue the interrupted run in --out from its last checkpoint")
    if force:
        p.add_argument("--force", action="store_true",
                       help="replace a non-empty --out (the old one is kept until the new one "
                            "has something to put there)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


_TORCH_COMMANDS = ("realism", "train", "predict", "fit-refiner", "generate", "run", "demo",
                   "experiment", "soup")


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after an option's help, except where it says nothing (no
    default, a flag off) or the help already names its default in words ("(default: None)"
    after "default: the model's" misled)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cellsynth",
                     description="Synthetic training data for cell instance segmentation.")
    parser.add_argument("--version", action="version", version=f"cellsynth {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)  # none: the help
    original_add_parser = sub.add_parser

    def add_parser(name: str, **kwargs):  # every command's --help shows the defaults
        return original_add_parser(name, formatter_class=_DefaultsHelp, **kwargs)
    sub.add_parser = add_parser

    p = sub.add_parser("inspect", help="summarise a dataset folder (images, sizes, instances) "
                                       "or a predict output")
    p.add_argument("dir", type=Path, help="dataset folder (images/, labels/, meta.json; or "
                                          "Cellpose's, StarDist's, a plain folder of images), "
                                          "a project folder as init takes it (unlabeled/, "
                                          "train/, val/, test/: each of them), one image file "
                                          "or OME-Zarr (a whole section: its levels), or a "
                                          "predict output")
    p.set_defaults(func=commands.cmd_inspect)

    p = sub.add_parser("export", help="write a dataset or predictions for Cellpose, StarDist, "
                                      "QuPath (GeoJSON) or COCO")
    p.add_argument("dir", type=Path, help="dataset folder (images/ + labels/) or predict output")
    p.add_argument("--to", required=True, choices=("cellpose", "stardist", "geojson", "coco"),
                   help="target format")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--objects", choices=("detection", "annotation"),
                   help="geojson only: QuPath object type of the cells (default detection; "
                        "annotations can be edited in QuPath: correct predictions and export "
                        "them back as labels)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    p.set_defaults(func=commands.cmd_export)

    p = sub.add_parser("simulate", help="simulate cell images with exact instance labels")
    p.add_argument("--preset", required=True, help="merker, nissl, he or fluo")
    p.add_argument("--n", type=_positive_int, required=True, help="number of images")
    p.add_argument("--size", type=_positive_int, default=256, help="image side in pixels")
    p.add_argument("--seed", type=_nonnegative_int, default=0,
                   help="image i is drawn from child i of this seed")
    p.add_argument("--out", type=Path, required=True, help="output dataset folder")
    p.add_argument("--workers", type=_positive_int, default=1, help="worker processes")
    p.add_argument("--config", type=Path, help="YAML file overriding preset parameters")
    p.add_argument("--pixel-size", type=_positive_float, help="output pixel size in micrometres")
    p.add_argument("--color", help="colour variant, e.g. gray or violet for merker/nissl")
    _add_output_flags(p)
    p.set_defaults(func=commands.cmd_simulate)

    p = sub.add_parser("fit-simulator", help="fit a preset to unlabeled real images (cell size "
                                             "and density, stain, noise, blur, elongation; "
                                             "on H&E the stroma's texture)")
    p.add_argument("--real", type=Path, required=True,
                   help="folder of real images, or one image such as a whole section "
                        "(only images are read, never labels)")
    p.add_argument("--preset", required=True, help="base preset: merker, nissl, he or fluo")
    p.add_argument("--out", type=Path, required=True,
                   help="fitted preset override (YAML) for simulate --config; a preview PNG "
                        "(real | fitted | base) is written beside it")
    p.add_argument("--config", type=Path,
                   help="YAML file overriding preset parameters before the fit (as for "
                        "simulate); the fitted file holds these overrides too")
    p.add_argument("--pixel-size", type=_positive_float,
                   help="pixel size of the real images in um (default: their meta.json, else "
                        "the preset's)")
    p.add_argument("--seed", type=_nonnegative_int, default=0,
                   help="seed of the simulated images compared with the real ones")
    p.add_argument("--spread", choices=("floor", "fitted"), default="floor",
                   help="floor (default): stain variation between cells and camera noise at "
                        "least the preset's, for a varied training set; fitted: as measured "
                        "on the real images")
    p.add_argument("--stains", choices=("preset", "measured"), default="preset",
                   help="stain vectors to draw with: preset (default) or measured (H&E: the "
                        "eosin colour of the real images; more alike to the eye, but it cost "
                        "a zero-label detector F1 on tcga_lgg, see docs/results.md)")
    _add_channel(p, "fit to this channel (0-based) of multi-channel images, e.g. the nuclear "
                    "stain (default: gray or RGB as they are, else channel 0 with a warning)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    p.set_defaults(func=commands.cmd_fit_simulator)

    p = sub.add_parser("evaluate", help="instance metrics (F1/AP/PQ over IoU 0.5-0.9)")
    p.add_argument("--pred", type=Path, required=True, help="predicted dataset or label folder")
    p.add_argument("--gt", type=Path, required=True, help="ground-truth dataset folder")
    p.add_argument("--json", type=Path, help="write the metrics as JSON here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    p.set_defaults(func=commands.cmd_evaluate)

    p = sub.add_parser("realism", help="compare two image sets (C2ST, SWD, histograms, spectra)")
    p.add_argument("--a", type=Path, required=True, help="first image set (dataset folder)")
    p.add_argument("--b", type=Path, required=True, help="second image set (dataset folder)")
    p.add_argument("--json", type=Path, help="write the metrics as JSON here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="crops, folds and the C2ST")
    p.add_argument("--folds", type=_positive_int, default=5, help="C2ST cross-validation folds")
    p.add_argument("--crop", type=_positive_int, default=64, help="C2ST crop side in pixels")
    p.add_argument("--crops", type=_positive_int, default=512, help="C2ST crops per image set")
    p.add_argument("--epochs", type=_positive_int, default=12, help="C2ST epochs per fold")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads for the C2ST")
    p.add_argument("--repeats", type=_positive_int, default=1,
                   help="redraw the C2ST this many times (seeds SEED, SEED+1, ...) and average")
    _add_channel(p, "compare this channel (0-based) of multi-channel images, e.g. the nuclear "
                    "channel against a gray simulation (gray and RGB images are kept as they "
                    "are; default: channel 0, with a warning)")
    p.set_defaults(func=commands.cmd_realism)

    p = sub.add_parser("train", help="train or fine-tune a CPN cell detector")
    p.add_argument("--data", type=Path, action="append", required=True,
                   help="labeled dataset folder (repeat for several)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--init", type=Path, help="fine-tune this trained detector: a train run "
                                             "folder or its checkpoint file")
    p.add_argument("--val", type=Path, help="labeled validation folder (F1, score threshold)")
    p.add_argument("--replay", type=Path, action="append",
                   help="fine-tuning: labeled folder the --init detector was trained on (e.g. "
                        "RUN/refined of `cellsynth run`; repeat for several), of which "
                        "--replay-fraction of each batch is drawn, so a few real images "
                        "cannot pull the detector away from it")
    p.add_argument("--replay-fraction", type=float, default=0.5,
                   help="share of each batch from --replay")
    p.add_argument("--config", type=Path, help="YAML training config; options given here "
                                               "override it")
    p.add_argument("--steps", type=_positive_int, help="optimiser steps (config default 1000)")
    p.add_argument("--crop", type=_positive_int, help="training crop side, a multiple of 32 "
                                                      "(config default 256)")
    p.add_argument("--batch", type=_positive_int, help="crops per step (config default 4)")
    p.add_argument("--lr", type=_positive_float, help="peak AdamW learning rate, cosine decay "
                                                      "(config default 1e-3)")
    p.add_argument("--model", help="detector architecture: slim_u22 (default), tiny_u22 (4x "
                                   "cheaper), u22 or resnet18_unet")
    _add_precision(p)
    p.add_argument("--val-every", type=_positive_int,
                   help="validate (F1, score threshold, best.pt) every this many steps "
                        "(config default 100)")
    p.add_argument("--patience", type=_positive_int,
                   help="stop at a plateau: after this many validations without a better F1 "
                        "(default: train all --steps)")
    p.add_argument("--pixel-size", type=_positive_float,
                   help="working pixel size (um), recorded for predict to rescale images to "
                        "(default: the --init detector's, else the one the --data folders "
                        "state)")
    p.add_argument("--workers", type=_nonnegative_int,
                   help="prepare batches in this many background processes (default 0: in "
                        "the loop; on a GPU 4 make a step ~3.5x faster)")
    _add_channel(p, "use only this channel (0-based) of multi-channel images; recorded, so "
                    "predict applies it too")
    _add_device(p, default=None)
    p.add_argument("--seed", type=_nonnegative_int, help="weights, crops and augmentation "
                                                         "(config default 0)")
    _add_output_flags(p, resume=True)
    p.set_defaults(func=commands.cmd_train)

    p = sub.add_parser("soup", help="average the weights of several fine-tunings of one "
                                    "detector into one (better than each, as fast)")
    p.add_argument("runs", type=Path, nargs="+",
                   help="train run folders (or checkpoints) fine-tuned with the same --init, "
                        "e.g. the same command with --seed 0, 1 and 2")
    p.add_argument("--out", type=Path, required=True, help="run folder of the averaged detector")
    p.add_argument("--val", type=Path, help="labeled images that choose its score threshold "
                                            "(e.g. the annotated ones it was fine-tuned on; "
                                            "default: the runs' median threshold)")
    _add_device(p)
    _add_output_flags(p)
    p.set_defaults(func=commands.cmd_soup)

    # --detector and its old name --model share a destination, so argparse cannot mark it
    # required (the command checks it); the usage line says it is
    p = sub.add_parser("predict", help="predict instance labels with a trained CPN",
                       usage="%(prog)s --detector DETECTOR --images IMAGES --out OUT "
                             "[options]")
    p.add_argument("--detector", type=Path,
                   help="trained detector (required): a `cellsynth train` run folder or its "
                        "checkpoint file, or a `cellsynth run` folder (the detector it "
                        "predicted with)")
    p.add_argument("--model", type=Path, dest="detector", help=argparse.SUPPRESS)  # old name
    p.add_argument("--images", type=Path, required=True,
                   help="folder of images (or dataset), TIFF/Zarr for large sections")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (labels/, overlays/ but for whole sections, detections/ "
                        "with one CSV of cells per image, meta.json)")
    p.add_argument("--tile", type=_positive_int,
                   help="tile size in the model's pixels (default max(crop, 1024))")
    p.add_argument("--overlap", type=_positive_int, default=96, help="tile overlap in pixels")
    p.add_argument("--batch", type=_positive_int,
                   help="tiles per forward pass (default: ~1 megapixel's worth)")
    p.add_argument("--score-thresh", type=_score, help="override the validated threshold "
                   "(0-1)")
    p.add_argument("--nms", type=_score, metavar="IOU",
                   help="a proposal whose box overlaps a better one by more than this IoU is "
                        "dropped as the same cell (default: the detector's, 0.2; raise it for "
                        "packed cells)")
    _add_device(p)
    _add_precision(p, default="auto", int8=True)
    _add_channel(p, "use only this channel (0-based) of multi-channel images (default: the "
                    "model's)")
    p.add_argument("--level", type=_nonnegative_int, default=0,
                   help="resolution level of pyramidal TIFF / OME-Zarr inputs (0 = full)")
    p.add_argument("--pixel-size", type=_positive_float,
                   help="the images' pixel size in um, at full resolution (--level scales "
                        "it; default: meta.json or the file's own metadata); images are "
                        "resampled to the model's")
    p.add_argument("--labels", choices=("auto", "tiff", "ome-zarr"), default="auto",
                   help="label format: ome-zarr (chunked, pyramid, pixel size: napari, QuPath, "
                        "Fiji), tiff, or auto (OME-Zarr above 8192 x 8192 pixels)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: predict the 8 flips/transposes and let them "
                        "vote on each cell and its outline (8x the time; more accurate outlines)")
    p.add_argument("--empty-contrast", type=_score,
                   help="tiles in which nothing stands out from its surroundings by more than "
                        "this share of the intensity range (empty glass around a section) are "
                        "not predicted (default 0.03, above the tile's own noise); 0 predicts "
                        "every tile")
    p.add_argument("--faint-from", type=Path, metavar="ANNOTATED",
                   help="an annotated dataset folder (e.g. the images the detector was "
                        "fine-tuned on): detections fainter than nearly all of its annotated "
                        "cells are dropped (default: none are)")
    p.add_argument("--faint-percentile", type=float,
                   help="with --faint-from: drop detections whose mean stain (or, for bright "
                        "cells on a dark background, intensity) is below this percentile of "
                        "the annotated cells' (default 5)")
    p.add_argument("--part", type=_part, metavar="I/N",
                   help="one of N processes (a cluster's array jobs, machines sharing the "
                        "folder above --out): predict rows I, I+N, ... of tiles of every image "
                        "into the cache beside --out and write nothing else; the same command "
                        "without --part then predicts only what is missing and writes --out")
    _add_output_flags(p)
    p.set_defaults(func=commands.cmd_predict)

    p = sub.add_parser("fit-refiner", help="train a SPADE refiner on simulated + real images")
    p.add_argument("--sim", type=Path, required=True, help="simulated dataset (with labels)")
    p.add_argument("--real", type=Path, required=True,
                   help="folder of real images, any size (labels ignored)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--steps", type=_positive_int, help="total training steps (config default "
                                                       "3000)")
    p.add_argument("--crop", type=_positive_int, help="training crop side (default 128)")
    p.add_argument("--batch", type=_positive_int, help="batch size (default 4)")
    p.add_argument("--self-reg", type=float, help="self-regularisation weight (default 1.0)")
    p.add_argument("--seed", type=_nonnegative_int, help="weights, crops and noise (default 0)")
    _add_precision(p)
    p.add_argument("--real-pixel-size", type=_positive_float,
                   help="pixel size of the real images in um (default: their meta.json)")
    _add_channel(p, "use this channel (0-based) of multi-channel real images, the one the "
                    "simulation draws (default: gray or RGB as they are, else channel 0)")
    p.add_argument("--config", type=Path, help="YAML file of refiner settings")
    _add_device(p)
    p.add_argument("--max-minutes", type=_positive_float,
                   help="stop (with a checkpoint) once training has taken this many minutes, "
                   "counting the runs that --resume continues")
    _add_output_flags(p, resume=True)
    p.set_defaults(func=commands.cmd_fit_refiner)

    p = sub.add_parser("generate", help="refine a simulated dataset with a trained refiner")
    p.add_argument("--refiner", type=Path, required=True,
                   help="trained refiner: a fit-refiner run folder or its checkpoint file")
    p.add_argument("--sim", type=Path, required=True, help="simulated dataset (with labels)")
    p.add_argument("--out", type=Path, required=True, help="output dataset folder")
    p.add_argument("--batch", type=_positive_int, default=8, help="images per forward pass")
    _add_device(p)
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of the noise input")
    _add_precision(p, default="auto")
    _add_output_flags(p)
    p.set_defaults(func=commands.cmd_generate)

    p = sub.add_parser("init", help="write a pipeline config for your own folders (stain, "
                                    "pixel size and recipe from the images)")
    p.add_argument("data", type=Path, help="a folder with unlabeled/, train/, val/, test/ (any "
                   "present) or one folder of images (with labels/ if annotated)")
    p.add_argument("--out", type=Path, help="config to write (default: DATA's name + .yaml)")
    p.add_argument("--preset", choices=("merker", "nissl", "he", "fluo"),
                   help="simulator preset (default: guessed from the images)")
    p.add_argument("--pixel-size", type=_positive_float, help="your images' um per pixel "
                   "(default: meta.json or what the files state)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda where torch sees a "
                                    "GPU, else cpu)")
    p.add_argument("--recipe", choices=("accurate", "fast"),
                   help="with annotated images: accurate (no refiner, longer pretraining, a "
                        "soup of 5 fine-tunings; 2.5x the time) or fast (default: accurate "
                        "for Nissl on a GPU or a CPU with native bf16, else fast)")
    _add_channel(p, "the channel (0-based) of multi-channel images with the cells, e.g. the "
                    "nuclear stain (default: 0, written into the config to check)")
    p.set_defaults(func=commands.cmd_init)

    p = sub.add_parser("run", help="run the whole pipeline from a YAML config")
    p.add_argument("config", type=Path, nargs="?",  # (after --reuse A B, taken from its end)
                   help="pipeline YAML (see configs/)")
    p.add_argument("--out", type=Path, required=True, help="run folder (re-run to continue)")
    p.add_argument("--seed", type=_nonnegative_int,
                   help="override the config's seed (every stage derives its randomness "
                        "from it); stages already done with another seed are redone")
    p.add_argument("--estimate", action="store_true",
                   help="time a few steps of each network the config trains, on this machine, "
                        "and print how long each stage will take; runs and writes nothing")
    p.add_argument("--reuse", type=Path, nargs="+", metavar="RUN",
                   help="earlier run folders: their finished stages that this config would do "
                        "again the same way (same options, seed and inputs) are copied "
                        "instead, e.g. a recipe's pretraining for other annotated images or "
                        "another dataset of the same stain and pixel size")
    _add_output_flags(p, force=False)
    p.set_defaults(func=commands.cmd_run)

    p = sub.add_parser("experiment", help="settings x seeds of detectors on a real dataset, "
                                          "compared with a paired bootstrap")
    p.add_argument("config", type=Path, help="experiment YAML (see configs/experiment-*.yaml)")
    p.add_argument("--out", type=Path, required=True,
                   help="experiment folder (re-run to continue)")
    p.add_argument("--seeds", type=_nonnegative_int, nargs="+",
                   help="override the config's seeds")
    p.add_argument("--settings", nargs="+", metavar="NAME",
                   help="only these settings (and comparisons among them); finished units "
                        "are shared with the full experiment")
    p.add_argument("--processes", type=_positive_int, default=1,
                   help="on a CPU, run up to this many units that do not depend on each other "
                        "side by side, each process on its share of the threads (another "
                        "seed's pretraining, a setting's other runs); what it gains depends "
                        "on the CPU (benchmarks/experiment_side_by_side.py); the test split "
                        "is still read only at the end (default 1: one at a time with all "
                        "threads)")
    p.add_argument("--estimate", action="store_true",
                   help="time a few steps of each network on this machine and print how long "
                        "the units still to run will take; runs and writes nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    p.set_defaults(func=commands.cmd_experiment)

    p = sub.add_parser("report", help="write RUN/report.html for a run folder")
    p.add_argument("run", type=Path, help="a `cellsynth run` folder")
    p.set_defaults(func=commands.cmd_report)

    p = sub.add_parser("demo", help="the whole pipeline on bundled data, in minutes")
    p.add_argument("--out", type=Path, default=Path("cellsynth-demo"),
                   help="run folder (re-run to continue)")
    _add_output_flags(p)
    p.set_defaults(func=commands.cmd_demo)
    for name, command in sub.choices.items():
        if name in _TORCH_COMMANDS and name != "realism":
            command.add_argument("--threads", type=_positive_int,
                                 help="torch CPU threads (default: the free usable cores; "
                                      "env CELLSYNTH_THREADS)")
    return parser
