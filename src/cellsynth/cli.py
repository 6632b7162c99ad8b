"""The ``cellsynth`` command: argparse subcommands that fill configs and call the library.

Heavy imports (torch, dask, the simulator) happen inside the command functions so that
``cellsynth --help`` is instant. User mistakes (CellsynthError) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
import threading
import warnings
from dataclasses import replace
from pathlib import Path

from cellsynth import __version__
from cellsynth.errors import CellsynthError
from cellsynth.hardware import THREADS_SOURCE
from cellsynth.pipeline import layout

__all__ = ["main"]


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


# --- inspect ---------------------------------------------------------------------------------

def _cmd_inspect(args: argparse.Namespace) -> int:
    from cellsynth.io.images import IMAGE_SUFFIXES
    from cellsynth.io.inspect import format_summary, summarize
    from cellsynth.pipeline.init import ROLES

    # a project folder as `cellsynth init` takes it (unlabeled/, train/, ... and no images of
    # its own): each of them
    roles = [r for r in ROLES if (args.dir / r).is_dir()] if args.dir.is_dir() else []
    if roles and not (args.dir / "images").is_dir() and not any(
            p.suffix.lower() in IMAGE_SUFFIXES for p in args.dir.iterdir() if p.is_file()):
        print("\n\n".join(f"{r}/\n{format_summary(summarize(args.dir / r))}" for r in roles))
    else:
        print(format_summary(summarize(args.dir)))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from cellsynth.io.export import export

    summary = export(args.dir, args.to, args.out, force=args.force, objects=args.objects)
    print(f"wrote {summary['n_instances']} cells of {summary['n_images']} images as "
          f"{summary['format']} to {args.out}")
    return 0


# --- simulate --------------------------------------------------------------------------------

def _cmd_simulate(args: argparse.Namespace) -> int:
    from cellsynth.simulate import simulation_config, write_simulation

    config = simulation_config(
        args.preset, config_file=args.config, pixel_size_um=args.pixel_size, color=args.color
    )
    summary = write_simulation(
        config, n=args.n, size=args.size, seed=args.seed, out=args.out,
        workers=args.workers, force=args.force, progress=not args.quiet,
    )
    print(f"wrote {summary['n_images']} images ({summary['n_instances']} instances, "
          f"{summary['images_per_s']:.1f} images/s) to {args.out}")
    print(f"preview: {Path(args.out) / 'preview.png'}")
    return 0


def _cmd_fit_simulator(args: argparse.Namespace) -> int:
    from cellsynth.simulate import simulation_config
    from cellsynth.simulate.fit_report import write_fit

    base = simulation_config(args.preset, config_file=args.config)  # the preset if no file
    summary = write_fit(args.real, base, args.out, pixel_size_um=args.pixel_size,
                        seed=args.seed, spread=args.spread, stains=args.stains,
                        force=args.force, channel=args.channel)
    print(summary["table"])
    print(f"wrote {summary['yaml']} (use: cellsynth simulate --preset {args.preset} --config "
          f"{summary['yaml']} ...)")
    print(f"preview (real | fitted | base): {summary['preview']}")
    return 0


# --- evaluate / realism (cellsynth.evaluate) ------------------------------------------------

def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cellsynth.evaluate.cli import run_evaluate

    return run_evaluate(args)


def _cmd_realism(args: argparse.Namespace) -> int:
    from cellsynth.evaluate.cli import run_realism

    return run_realism(args)


# --- train / predict (cellsynth.segment) ---------------------------------------------------

# what the images were to the --init detector: fine-tuning keeps them so
_INHERITED = ("pixel_size_um", "channel", "source_channel")


def _init_architecture(init: Path | None, config: Path | None) -> dict:
    """The --init detector's architecture (model, contour order, ...), its working pixel size
    and its channel of multi-channel images, for every option that the --config file does
    not set: fine-tuning a tiny_u22 needs no --model tiny_u22, nor a detector trained on
    channel 1 at 0.25 um/px another --channel 1 --pixel-size 0.25."""
    if init is None:
        return {}
    from cellsynth.config import load_yaml
    from cellsynth.segment.predict import read_detector_checkpoint
    from cellsynth.segment.trainer import ARCHITECTURE

    _, ckpt = read_detector_checkpoint(init, needed_by="train --init", whole_runs=False)
    given = load_yaml(config) if config else {}
    spec, trained = ckpt["model_spec"], ckpt.get("config") or {}
    return ({k: spec[k] for k in ARCHITECTURE if k in spec and k not in given}
            | {k: trained[k] for k in _INHERITED if trained.get(k) is not None
               and k not in given})


def _cmd_train(args: argparse.Namespace) -> int:
    from cellsynth.errors import ConfigError
    from cellsynth.segment.trainer import load_train_config, train

    if args.replay and args.init is None and not args.resume:  # (mixed the two silently)
        raise ConfigError("--replay replays the data the --init detector was trained on while "
                          "fine-tuning; without --init, give both folders to --data")
    overrides = {
        "steps": args.steps, "crop": args.crop, "batch": args.batch, "lr": args.lr,
        "device": args.device, "seed": args.seed, "model": args.model,
        "precision": args.precision, "val_every": args.val_every, "patience": args.patience,
        "pixel_size_um": args.pixel_size, "channel": args.channel,
        "replay": args.replay_fraction if args.replay else None, "workers": args.workers}
    for key, value in _init_architecture(args.init, args.config).items():
        if overrides.get(key) is None:
            overrides[key] = value
    config = load_train_config(args.config, overrides)
    summary = train(config, args.data, args.out, init=args.init, val=args.val,
                    resume=args.resume, force=args.force, progress=not args.quiet,
                    replay=args.replay)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: one summary, rank 0's
        return 0
    print(f"trained {summary['steps']} steps (loss {summary['loss']:.3f}) -> {args.out}")
    if summary["best_val_f1"] >= 0:
        print(f"best validation F1@0.5 {summary['best_val_f1']:.3f} at score threshold "
              f"{summary['score_thresh']}")
    return 0


def _cmd_soup(args: argparse.Namespace) -> int:
    from cellsynth.segment.soup import soup

    summary = soup(args.runs, args.out, val=args.val, force=args.force, device=args.device)
    how = (f"validation F1@0.5 {summary['val_f1']:.3f} at score threshold "
           f"{summary['score_thresh']}" if "val_f1" in summary else
           f"score threshold {summary['score_thresh']} (the runs' median; --val chooses one)")
    print(f"averaged {len(summary['runs'])} fine-tunings -> {args.out}; {how}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from cellsynth.errors import ConfigError
    from cellsynth.segment.folders import predict_folder

    if args.detector is None:
        raise ConfigError("--detector is required: a train run folder or its checkpoint file, "
                          "or a `cellsynth run` folder")
    if args.faint_percentile is not None and args.faint_from is None:
        raise ConfigError("--faint-percentile needs --faint-from (the annotated images whose "
                          "cells set the cut)")
    summary = predict_folder(args.detector, args.images, args.out, tile=args.tile,
                             overlap=args.overlap, batch=args.batch,
                             score_thresh=args.score_thresh, device=args.device,
                             force=args.force, precision=args.precision,
                             channel=args.channel, level=args.level,
                             pixel_size_um=args.pixel_size, labels_as=args.labels,
                             tta=args.tta, progress=not args.quiet,
                             faint_from=args.faint_from, nms_thresh=args.nms,
                             **({} if args.faint_percentile is None
                                else {"faint_percentile": args.faint_percentile}),
                             **({} if args.empty_contrast is None
                                else {"empty_contrast": args.empty_contrast}))
    faint = (f"; {summary['faint']} detections fainter than the cells annotated in "
             f"{args.faint_from} dropped" if args.faint_from is not None else "")
    channel = (f", channel {summary['channel']} ({summary['channel_from']})"
               if summary.get("channel") is not None else "")
    print(f"predicted {summary['n_instances']} cells in {summary['n_images']} images "
          f"({summary['megapixels_per_s']:.2f} MP/s{channel}) -> {args.out}{faint}")
    return 0


# --- fit-refiner / generate (cellsynth.refine) -----------------------------------------------

def _cmd_fit_refiner(args: argparse.Namespace) -> int:
    from cellsynth.config import load_yaml
    from cellsynth.refine import fit, refine_config

    options = {"steps": args.steps, "crop": args.crop, "batch": args.batch,
               "self_reg": args.self_reg, "seed": args.seed, "precision": args.precision,
               "real_pixel_size_um": args.real_pixel_size, "channel": args.channel}
    data = {}
    if args.resume and (args.out / layout.CONFIG).is_file():
        data.update(load_yaml(args.out / layout.CONFIG))  # a resumed run keeps its settings
    if args.config is not None:
        data.update(load_yaml(args.config))
    config = refine_config(None, {**data, **{k: v for k, v in options.items() if v is not None}})
    summary = fit(config, args.sim, args.real, args.out, resume=args.resume, force=args.force,
                  device=args.device, max_minutes=args.max_minutes, progress=not args.quiet)
    losses = ", ".join(f"{k} {v:.3f}" for k, v in summary["losses"].items())
    print(f"refiner at step {summary['step']} ({summary['steps_per_s']:.2f} steps/s, "
          f"{'bf16' if summary['bf16'] else 'fp32'}): {losses}")
    print(f"samples: {args.out / layout.SAMPLES}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from cellsynth.refine import refine_dataset

    summary = refine_dataset(args.refiner, args.sim, args.out, batch=args.batch,
                             device=args.device, seed=args.seed, force=args.force,
                             precision=args.precision, progress=not args.quiet)
    fid = summary["fidelity"]
    print(f"refined {summary['n_images']} images ({summary['images_per_s']:.1f} images/s) "
          f"into {args.out}; label fidelity {fid['preserved']:.3f} of {fid['n_instances']} "
          f"instances")
    print(f"preview: {Path(args.out) / 'preview.png'}")
    return 0


# --- demo ------------------------------------------------------------------------------------

def _cmd_demo(args: argparse.Namespace) -> int:
    from cellsynth.pipeline.demo import demo

    report = demo(args.out, force=args.force, progress=not args.quiet)
    print(f"demo finished: open {report}")
    return 0


# --- run / report (cellsynth.pipeline) -------------------------------------------------------

def _cmd_init(args: argparse.Namespace) -> int:
    from cellsynth.pipeline.init import init_config, run_name

    out = args.out or Path(f"{run_name(args.data)}.yaml")
    s = init_config(args.data, out, preset=args.preset, pixel_size_um=args.pixel_size,
                    force=args.force, device=args.device, recipe=args.recipe,
                    channel=args.channel)
    how = f"guessed: {s['reason']}" if s["guessed"] else "chosen by --preset"
    print(f"preset {s['preset']} ({how})")
    if s["channel_guessed"]:
        print(f"your images have {s['channels']} channels: every stage uses channel 0 "
              f"(real.channel in {out}); if the cells are in another, set it there or init "
              f"again with --channel N. Channels 0-{s['channels'] - 1} of one image, left to "
              f"right: {s['channel_preview']}")
    elif s["channel"] is not None:
        print(f"channel {s['channel']} of {s['channels']} (--channel)")
    if s["pixel_size_um"] is not None:
        print(f"pixel size {s['pixel_size_um']:g} um/px (from {s['pixel_from']})")
    else:
        print(f"pixel size unknown (no --pixel-size, meta.json or file metadata): set "
              f"real.pixel_size_um in {out} before running, else your images are taken "
              f"to be at the simulation's pixel size")
    roles = ", ".join(f"{role} {path}" for role, path in s["roles"].items())
    kind = f"{s['recipe']} annotated" if s["annotated"] else "zero-label"
    why = f" ({s['recipe_from']})" if s["annotated"] else ""
    print(f"{kind} recipe{why}; folders: {roles}")
    print(f"device {s['device']} ({s['device_from']})")
    predicted = ("test/ (predicted and scored)" if "test" in s["roles"]
                 else f"{s['roles']['unlabeled']} (predicted)")
    run_dir = f"runs/{s['name']}"
    print(f"wrote {out}; next: cellsynth run {shlex.quote(str(out))} --out "
          f"{shlex.quote(run_dir)}  -> labels of {predicted} in {run_dir}/predict, report.html "
          f"beside them (add --estimate first to see how long it takes on this machine)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from cellsynth.pipeline.config import load_pipeline_config
    from cellsynth.pipeline.run import run

    config = load_pipeline_config(args.config)
    if args.seed is not None:  # the same recipe at another seed (its own --out, usually)
        config = replace(config, seed=args.seed)
    if args.estimate:
        from cellsynth.pipeline.config import check_inputs
        from cellsynth.pipeline.estimate import estimate, format_estimate

        check_inputs(config)
        machine = _estimate_machine(config.device, config.pretrain.precision)
        print(format_estimate(estimate(config, args.out), machine=machine))
        return 0
    summaries = run(config, args.out, progress=not args.quiet)
    scored = summaries.get("evaluate") or {}
    score = (f"; test F1@0.5 {scored['f1_50']:.3f}, F1avg {scored['f1_avg']:.3f}"
             if "f1_50" in scored else "")
    print(f"run finished ({', '.join(summaries)}){score}: open "
          f"{Path(args.out) / 'report.html'}")
    return 0


def _estimate_machine(device: str, precision: str) -> str:
    """Threads set as the work will set them (--threads, load, cores); the machine in words."""
    import torch

    from cellsynth.hardware import choose_precision, configure_threads, cpu_model, resolve_device

    resolve_device(device)  # (a GPU named where there is none: one line, not a traceback)
    threads = configure_threads()
    name = "cpu: " + cpu_model() if device == "cpu" else torch.cuda.get_device_name(device)
    return f"{name}, {choose_precision(precision, device).name}, {threads} thread(s)"


def _cmd_experiment(args: argparse.Namespace) -> int:
    from cellsynth.pipeline.experiment import (
        load_experiment_config,
        run_experiment,
        select_settings,
        subset_tag,
    )

    config = whole = load_experiment_config(args.config)
    if args.seeds is not None:
        config = replace(config, seeds=tuple(args.seeds))
    if args.settings is not None:
        config = select_settings(config, args.settings)
    if args.estimate:
        from cellsynth.pipeline.estimate import format_estimate
        from cellsynth.pipeline.experiment_estimate import estimate_experiment

        machine = _estimate_machine(config.device, config.pretrain.precision)
        print(format_estimate(estimate_experiment(config, args.out), machine=machine))
        return 0
    subset = subset_tag(whole, config)
    run_experiment(config, args.out, subset=subset, processes=args.processes,
                   log=(lambda line: None) if args.quiet else
                   (lambda line: print(line, flush=True)))
    if subset is None:
        print(f"experiment finished: {Path(args.out) / layout.RESULTS}, "
              f"{Path(args.out) / 'results.md'}")
    else:  # the whole experiment's summary is left as it was
        print(f"part of the experiment finished ({subset}): "
              f"{Path(args.out) / f'results.{subset}.json'}, "
              f"{Path(args.out) / f'results.{subset}.md'}; run it with all its seeds and "
              f"settings to pool everything into {layout.RESULTS} (nothing retrains)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from cellsynth.pipeline.report import write_report

    print(f"wrote {write_report(args.run)}")
    return 0


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
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("export", help="write a dataset or predictions for Cellpose, StarDist, "
                                      "QuPath (GeoJSON) or COCO")
    p.add_argument("dir", type=Path, help="dataset folder (images/ + labels/) or predict output")
    p.add_argument("--to", required=True, choices=("cellpose", "stardist", "geojson", "coco"),
                   help="target format")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--objects", choices=("detection", "annotation"), default="detection",
                   help="geojson: QuPath object type of the cells (annotations can be edited "
                        "in QuPath: correct predictions and export them back as labels)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    p.set_defaults(func=_cmd_export)

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
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("fit-simulator", help="fit a preset to unlabeled real images (cell size "
                                             "and density, stain, noise, blur, elongation; "
                                             "on H&E the stroma's texture)")
    p.add_argument("--real", type=Path, required=True,
                   help="folder of real images (only images are read, never labels)")
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
    p.set_defaults(func=_cmd_fit_simulator)

    p = sub.add_parser("evaluate", help="instance metrics (F1/AP/PQ over IoU 0.5-0.9)")
    p.add_argument("--pred", type=Path, required=True, help="predicted dataset or label folder")
    p.add_argument("--gt", type=Path, required=True, help="ground-truth dataset folder")
    p.add_argument("--json", type=Path, help="write the metrics as JSON here")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("realism", help="compare two image sets (C2ST, SWD, histograms, spectra)")
    p.add_argument("--a", type=Path, required=True, help="first image set (dataset folder)")
    p.add_argument("--b", type=Path, required=True, help="second image set (dataset folder)")
    p.add_argument("--json", type=Path, help="write the metrics as JSON here")
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
    p.set_defaults(func=_cmd_realism)

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
    p.set_defaults(func=_cmd_train)

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
    p.set_defaults(func=_cmd_soup)

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
    _add_output_flags(p)
    p.set_defaults(func=_cmd_predict)

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
    p.set_defaults(func=_cmd_fit_refiner)

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
    p.set_defaults(func=_cmd_generate)

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
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("run", help="run the whole pipeline from a YAML config")
    p.add_argument("config", type=Path, help="pipeline YAML (see configs/)")
    p.add_argument("--out", type=Path, required=True, help="run folder (re-run to continue)")
    p.add_argument("--seed", type=_nonnegative_int,
                   help="override the config's seed (every stage derives its randomness "
                        "from it); stages already done with another seed are redone")
    p.add_argument("--estimate", action="store_true",
                   help="time a few steps of each network the config trains, on this machine, "
                        "and print how long each stage will take; runs and writes nothing")
    _add_output_flags(p, force=False)
    p.set_defaults(func=_cmd_run)

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
    p.set_defaults(func=_cmd_experiment)

    p = sub.add_parser("report", help="write RUN/report.html for a run folder")
    p.add_argument("run", type=Path, help="a `cellsynth run` folder")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("demo", help="the whole pipeline on bundled data, in minutes")
    p.add_argument("--out", type=Path, default=Path("cellsynth-demo"),
                   help="run folder (re-run to continue)")
    _add_output_flags(p)
    p.set_defaults(func=_cmd_demo)
    for name, command in sub.choices.items():
        if name in _TORCH_COMMANDS and name != "realism":
            command.add_argument("--threads", type=_positive_int,
                                 help="torch CPU threads (default: the free usable cores; "
                                      "env CELLSYNTH_THREADS)")
    return parser


def _write_above_bars(text: str, stream) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=stream)


class _BarSafeHandler(logging.StreamHandler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            _write_above_bars(self.format(record), self.stream)
        except Exception:  # noqa: BLE001  (logging's own convention)
            self.handleError(record)


@contextlib.contextmanager
def _output(command: str, quiet: bool):
    """One line per note: logging (info unless --quiet) and warnings, prefixed by command,
    each on a line of its own above any progress bar (tqdm.write: a note written while a bar
    was drawn landed on the bar's line, for the next redraw to overwrite)."""
    handler = _BarSafeHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"cellsynth {command}: %(message)s"))
    logger = logging.getLogger("cellsynth")
    saved = logger.handlers[:], logger.level, logger.propagate, warnings.showwarning
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False

    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        # once per command: the stages of a run read the same folders and said the same
        # note about them up to 8 times, burying the lines that differ
        if str(message) not in shown:
            shown.add(str(message))
            _write_above_bars(f"cellsynth {command}: warning: {message}", file or sys.stderr)

    from cellsynth.hardware import forget_announcements

    forget_announcements()  # each command says once what it chose
    try:
        # a fresh filter list: Python then forgets which warnings it has shown, so a second
        # command in the same process (the API, napari, the tests) says its notes again
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = show
            yield
    finally:
        logger.handlers[:], logger.level, logger.propagate, warnings.showwarning = saved


def _continue_hint(args: argparse.Namespace) -> str:
    """What continues an interrupted command: for a training, --resume only once it has a
    checkpoint (stopped while starting, it said --resume, which then found nothing)."""
    from cellsynth.pipeline import layout

    hint = _CONTINUE.get(args.command, "")
    out = getattr(args, "out", None)
    if "--resume" in hint and out is not None and not (Path(out) / layout.LAST).is_file():
        return "; nothing was trained yet: the same command starts again"
    return hint


# what continues an interrupted command (the others start again; nothing was published)
_CONTINUE = {"train": "; the same command with --resume continues",
             "fit-refiner": "; the same command with --resume continues",
             "run": "; the same command continues", "experiment": "; the same command continues",
             "demo": "; the same command continues",
             "predict": "; the same command continues (finished rows of tiles are kept)"}


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    """SIGTERM (``kill``, a job scheduler's stop) as Ctrl-C: the command's one line, its
    files left as an interrupt leaves them, and exit status 130; it ended at once, silent
    (143), where no training loop had taken the signal to stop between steps."""
    raise KeyboardInterrupt


LOG_BAR_INTERVAL_S = 30  # progress-bar updates when stderr is not a terminal


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    threads = getattr(args, "threads", None)
    saved = {var: os.environ.get(var) for var in ("CELLSYNTH_THREADS", THREADS_SOURCE)}
    if threads is not None:  # the library (and any worker process) reads it from there
        os.environ["CELLSYNTH_THREADS"] = str(threads)
        os.environ[THREADS_SOURCE] = "--threads"  # what the "threads N (set by ...)" line names
    # progress bars into a log file (a background run): one update every 30 s, not one per
    # step (a 1000-step run wrote 0.5 MB of bars); tqdm reads its defaults from TQDM_*
    quiet_bars = not sys.stderr.isatty() and "TQDM_MININTERVAL" not in os.environ
    if quiet_bars:
        os.environ["TQDM_MININTERVAL"] = str(LOG_BAR_INTERVAL_S)
    import signal

    terminate = (signal.signal(signal.SIGTERM, _terminate_as_interrupt)
                 if threading.current_thread() is threading.main_thread() else None)
    try:
        with _output(args.command, getattr(args, "quiet", False)):
            return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader went away (`| head`): nothing left to say, to anyone
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except CellsynthError as err:
        print(f"cellsynth {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # An interrupt can land inside a library's constructor (imageio's PillowPlugin), whose
        # half-built object then fails in __del__ and prints "Exception ignored ...
        # Traceback" after our line; the user stopped the command, so such finaliser noise
        # is not shown.
        sys.unraisablehook = lambda unraisable: None
        print(f"cellsynth {args.command}: interrupted{_continue_hint(args)}",
              file=sys.stderr)
        return 130
    except OSError as err:  # the machine, not cellsynth: a full disk, a permission, ...
        where = f"{err.filename}: " if err.filename else ""
        print(f"cellsynth {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    finally:
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)
        if quiet_bars:
            os.environ.pop("TQDM_MININTERVAL", None)
        if threads is not None:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value


if __name__ == "__main__":
    sys.exit(main())
