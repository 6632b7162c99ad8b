"""What each ``cellsynth`` command does with its parsed options: fill a config, call the
library, say the result in a line or two.
"""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import replace
from pathlib import Path

from cellsynth.pipeline import layout

# --- inspect ---------------------------------------------------------------------------------

def cmd_inspect(args: argparse.Namespace) -> int:
    from cellsynth.io.images import IMAGE_SUFFIXES
    from cellsynth.io.inspect import format_summary, summarize
    from cellsynth.pipeline.init import role_folders

    # a project folder as `cellsynth init` takes it (unlabeled/, train/, ... and no images of
    # its own): each of them
    roles = role_folders(args.dir) if args.dir.is_dir() else {}
    if roles and not (args.dir / "images").is_dir() and not any(
            p.suffix.lower() in IMAGE_SUFFIXES for p in args.dir.iterdir() if p.is_file()):
        print("\n\n".join(f"{d.name}/\n{format_summary(summarize(d))}" for d in roles.values()))
    else:
        print(format_summary(summarize(args.dir)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cellsynth.errors import ConfigError
    from cellsynth.io.export import export

    if args.objects is not None and args.to != "geojson":  # (it was ignored without a word)
        raise ConfigError(f"--objects sets QuPath's object type of --to geojson; --to "
                          f"{args.to} has none")
    summary = export(args.dir, args.to, args.out, force=args.force,
                     objects=args.objects or "detection")
    print(f"wrote {summary['n_instances']} cells of {summary['n_images']} images as "
          f"{summary['format']} to {args.out}")
    return 0


# --- simulate --------------------------------------------------------------------------------

def cmd_simulate(args: argparse.Namespace) -> int:
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


def _check_channel(real: str | os.PathLike, channel: int | None) -> None:
    """A --channel that the user's own real images (a folder or one image) do not have is
    refused in one line naming the file, as train and predict refuse it. (The API and `run`
    take a gray image as that channel saved alone, as a run stages it; given by hand on
    gray images it was ignored without a word.)"""
    if channel is None:
        return
    from cellsynth.io.datasets import is_one_image, load_dataset
    from cellsynth.io.headers import check_headers

    real = Path(real)
    paths = ([real] if is_one_image(real) else  # (a file, or a .zarr section: a folder)
             [s.image_path for s in load_dataset(real, require_labels=False)])
    check_headers(paths, channel=channel)


def cmd_fit_simulator(args: argparse.Namespace) -> int:
    from cellsynth.simulate import simulation_config
    from cellsynth.simulate.fit_report import write_fit

    _check_channel(args.real, args.channel)
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

def cmd_evaluate(args: argparse.Namespace) -> int:
    from cellsynth.evaluate.cli import run_evaluate

    return run_evaluate(args)


def cmd_realism(args: argparse.Namespace) -> int:
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


def cmd_train(args: argparse.Namespace) -> int:
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


def cmd_soup(args: argparse.Namespace) -> int:
    from cellsynth.segment.soup import soup

    summary = soup(args.runs, args.out, val=args.val, force=args.force, device=args.device)
    how = (f"validation F1@0.5 {summary['val_f1']:.3f} at score threshold "
           f"{summary['score_thresh']}" if "val_f1" in summary else
           f"score threshold {summary['score_thresh']} (the runs' median; --val chooses one)")
    print(f"averaged {len(summary['runs'])} fine-tunings -> {args.out}; {how}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
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
                             part=args.part,
                             **({} if args.faint_percentile is None
                                else {"faint_percentile": args.faint_percentile}),
                             **({} if args.empty_contrast is None
                                else {"empty_contrast": args.empty_contrast}))
    if args.part is not None:  # (its line, naming the cache and what next, was said)
        return 0
    faint = (f"; {summary['faint']} detections fainter than the cells annotated in "
             f"{args.faint_from} dropped" if args.faint_from is not None else "")
    channel = (f", channel {summary['channel']} ({summary['channel_from']})"
               if summary.get("channel") is not None else "")
    n = summary["n_images"]
    kept = summary.get("megapixels_kept", 0.0)
    total = summary.get("megapixels", 0.0) + kept
    speed = (f"{summary['megapixels_per_s']:.2f} MP/s" if summary.get("megapixels", 1.0) > 0
             else "nothing left to predict")
    if kept > 0:  # (--part, or a stopped run, predicted these: not this call's speed)
        speed += f"; {kept / total:.0%} of the tiles were predicted before"
    print(f"predicted {summary['n_instances']} cells in {n} image{'s' if n != 1 else ''} "
          f"({speed}{channel}) -> {args.out}{faint}")
    return 0


# --- fit-refiner / generate (cellsynth.refine) -----------------------------------------------

def cmd_fit_refiner(args: argparse.Namespace) -> int:
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
    _check_channel(args.real, config.channel)
    summary = fit(config, args.sim, args.real, args.out, resume=args.resume, force=args.force,
                  device=args.device, max_minutes=args.max_minutes, progress=not args.quiet)
    losses = ", ".join(f"{k} {v:.3f}" for k, v in summary["losses"].items())
    print(f"refiner at step {summary['step']} ({summary['steps_per_s']:.2f} steps/s, "
          f"{'bf16' if summary['bf16'] else 'fp32'}): {losses}")
    print(f"samples: {args.out / layout.SAMPLES}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
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

def cmd_demo(args: argparse.Namespace) -> int:
    from cellsynth.pipeline.demo import demo

    report = demo(args.out, force=args.force, progress=not args.quiet)
    print(f"demo finished: open {report}")
    return 0


# --- run / report (cellsynth.pipeline) -------------------------------------------------------

def cmd_init(args: argparse.Namespace) -> int:
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
    elif s["pixel_sizes_stated"]:
        said = ", ".join(f"{size:g} um/px ({n} image(s))"
                         for size, n in sorted(s["pixel_sizes_stated"].items()))
        print(f"your image files state different pixel sizes: {said}; each is read at its "
              f"own (real.pixel_size_um left empty in {out}); an image that states none is "
              f"taken to be at the simulation's pixel size")
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


def cmd_run(args: argparse.Namespace) -> int:
    from cellsynth.errors import ConfigError
    from cellsynth.pipeline.config import load_pipeline_config
    from cellsynth.pipeline.run import run

    if args.config is None:  # `run --reuse A B CONFIG --out X`: --reuse took the config too
        if not (args.reuse and args.reuse[-1].suffix.lower() in (".yaml", ".yml")
                and args.reuse[-1].is_file()):
            raise ConfigError("the pipeline YAML is missing: cellsynth run CONFIG --out RUN "
                              "[--reuse EARLIER ...]")
        args.config, args.reuse = args.reuse[-1], args.reuse[:-1]
    config = load_pipeline_config(args.config)
    if args.seed is not None:  # the same recipe at another seed (its own --out, usually)
        config = replace(config, seed=args.seed)
    if args.estimate:
        from cellsynth.pipeline.config import check_inputs
        from cellsynth.pipeline.estimate import estimate, format_estimate
        from cellsynth.pipeline.run import check_out

        check_inputs(config)
        check_out(config, args.out)
        machine = _estimate_machine(config.device, config.pretrain.precision)
        print(format_estimate(estimate(config, args.out, reuse=args.reuse or ()),
                              machine=machine))
        return 0
    summaries = run(config, args.out, progress=not args.quiet, reuse=args.reuse or ())
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


def cmd_experiment(args: argparse.Namespace) -> int:
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


def cmd_report(args: argparse.Namespace) -> int:
    from cellsynth.pipeline.report import write_report

    print(f"wrote {write_report(args.run)}")
    return 0
