"""CPN speed on this machine: training s/step and prediction megapixels/s, fp32 vs bf16.

    python benchmarks/segment.py [--crop 256] [--batch 4] [--steps 5] [--device cpu]
                                 [--model slim_u22] [--size 1024] [--tile 512]
                                 [--compile] [--head-kernels 7 3] [--json PATH]

The baseline is fp32; bf16 autocasts the CPN core (backbone + heads) only, on the CPU and on
a GPU alike. Prediction runs the tiled predictor on a ``--size``² simulated nissl image
(tiles of ``--tile`` + 96 px overlap). ``--compile`` also times each precision with
``torch.compile`` on the core (on a CPU its first steps take minutes to compile). GPU
timings wait for the device (``torch.cuda.synchronize``). benchmarks/gpu.sh runs this on a
GPU machine.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.simplefilter("ignore")


def main() -> None:
    from cellsynth.segment import cpn
    from cellsynth.segment.predict import Detector, make_predictor
    from cellsynth.segment.tiles import tiled_proposals
    from cellsynth.simulate import simulate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="slim_u22", help="network of the training timing")
    parser.add_argument("--size", type=int, default=1024, help="side of the predicted image")
    parser.add_argument("--tile", type=int, default=512, help="prediction tile size")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--json", help="write the timings here")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=["fp32", "bf16"], help="those to time (bf16 emulated on an "
                        "AVX2-only CPU costs minutes a step: time it with few --steps)")
    parser.add_argument("--head-kernels", type=int, nargs="+", default=[7],
                        help="kernels of the CPN heads to time; the first is the baseline")
    parser.add_argument("--detector", help="trained detector run for the prediction timing (an "
                        "untrained CPN proposes far too many cells: prediction looks slow)")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = list(simulate("nissl", args.batch, args.crop, seed=0))
    big, _ = next(simulate("nissl", 1, args.size, seed=1))
    cuda = args.device.startswith("cuda")

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    results = {}
    for precision, compiled, kernel in [(p, c, k) for k in args.head_kernels
                                        for c in ([False, True] if args.compile else [False])
                                        for p in args.precisions]:
        name = (precision + (" compiled" if compiled else "")
                + (f" heads {kernel}x{kernel}" if kernel != args.head_kernels[0] else ""))
        model = cpn.build_model(in_channels=3, model=args.model,
                                head_kernel=kernel).to(args.device)
        cpn.set_core_precision(model, precision)
        if compiled:
            model.core.compile()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        items = []
        for image, labels in data:
            item = cpn.training_targets(labels, samples=model.samples, order=model.order, rng=rng)
            item["inputs"] = image.astype(np.float32) / 255
            items.append(item)
        batch = {k: v.to(args.device) for k, v in cpn.collate(items).items()}
        model.train()
        times = []
        for _ in range(args.steps + (3 if compiled else 1)):  # the first steps warm up
            t0 = now()
            loss = model(batch["inputs"], targets=batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(now() - t0)
        step_s = float(np.median(times[-args.steps:]))
        detector = Detector(model, 3, 0.9, args.crop, None, 0, "")
        if args.detector and kernel == args.head_kernels[0]:
            from cellsynth.segment.predict import load_detector

            detector = load_detector(args.detector, device=args.device)
            cpn.set_core_precision(detector.model, precision)
            if compiled:
                detector.model.core.compile()
        predictor = make_predictor(detector, device=args.device)
        image = big.astype(np.float32) / 255
        # warm-up; compiled, on the very tiles timed (each new tile shape recompiles)
        tiled_proposals(image if compiled else image[:512, :512], predictor,
                        tile=args.tile, overlap=96)
        t0 = now()
        tiled_proposals(image, predictor, tile=args.tile, overlap=96)
        mp_s = image.shape[0] * image.shape[1] / 1e6 / (now() - t0)
        results[name] = (step_s, mp_s)
        print(f"{name}: train {step_s:.3f} s/step ({args.crop}^2, batch {args.batch}), "
              f"predict {mp_s:.3f} MP/s ({'trained' if args.detector else 'untrained'} model)",
              flush=True)
    if "fp32" in results and "bf16" in results:
        (s32, p32), (s16, p16) = results["fp32"], results["bf16"]
        print(f"bf16 vs fp32: training {s32 / s16:.2f}x faster, prediction {p16 / p32:.2f}x "
              f"faster")
    for precision in args.precisions if args.compile else []:
        (s0, p0), (s1, p1) = results[precision], results[f"{precision} compiled"]
        print(f"torch.compile vs eager ({precision}): training {s0 / s1:.2f}x faster, "
              f"prediction {p1 / p0:.2f}x faster")
    for kernel in args.head_kernels[1:]:
        for precision in args.precisions:
            s0 = results[precision][0]
            s1 = results[f"{precision} heads {kernel}x{kernel}"][0]
            # (prediction is not compared: an untrained CPN's speed follows how many cells
            # its random weights propose)
            print(f"heads {kernel}x{kernel} vs {args.head_kernels[0]}x{args.head_kernels[0]} "
                  f"({precision}): training {s0 / s1:.2f}x faster")
    from cellsynth.hardware import choose_precision, cpu_model

    auto = choose_precision("auto", args.device)
    print(f"precision auto on this machine: {auto}")
    if args.json:
        import json

        # the CPU's name: a timing means nothing without the machine it was taken on
        device = torch.cuda.get_device_name() if cuda else f"cpu: {cpu_model()}"
        Path(args.json).write_text(json.dumps({
            "device": device, "model": args.model, "crop": args.crop, "batch": args.batch,
            "size": args.size, "tile": args.tile, "auto": str(auto),
            "threads": torch.get_num_threads(), "steps": args.steps,
            "seconds_per_step": {k: v[0] for k, v in results.items()},
            "predict_mp_s": {k: v[1] for k, v in results.items()}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
