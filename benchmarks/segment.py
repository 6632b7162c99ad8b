"""CPN speed on this machine: training s/step and prediction megapixels/s, fp32 vs bf16.

    python benchmarks/segment.py [--crop 256] [--batch 4] [--steps 5] [--device cpu]

The baseline is fp32; bf16 autocasts the CPN core (backbone + heads) only. Prediction runs
the tiled predictor on a 1024 x 1024 simulated nissl image (4 tiles of 512 + overlap).
"""

from __future__ import annotations

import argparse
import time
import warnings

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
    parser.add_argument("--detector", help="trained detector run for the prediction timing (an "
                        "untrained CPN proposes far too many cells: prediction looks slow)")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = list(simulate("nissl", args.batch, args.crop, seed=0))
    big, _ = next(simulate("nissl", 1, 1024, seed=1))
    results = {}
    for precision in ("fp32", "bf16"):
        model = cpn.build_model(in_channels=3).to(args.device)
        if args.device == "cpu":
            cpn.set_core_precision(model, precision)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        items = []
        for image, labels in data:
            item = cpn.training_targets(labels, samples=model.samples, order=model.order, rng=rng)
            item["inputs"] = image.astype(np.float32) / 255
            items.append(item)
        batch = {k: v.to(args.device) for k, v in cpn.collate(items).items()}
        model.train()
        times = []
        for _ in range(args.steps + 1):  # first step warms up
            t0 = time.perf_counter()
            loss = model(batch["inputs"], targets=batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - t0)
        step_s = float(np.median(times[1:]))
        detector = Detector(model, 3, 0.9, args.crop, None, 0, "")
        if args.detector:
            from cellsynth.segment.predict import load_detector

            detector = load_detector(args.detector, device=args.device)
            cpn.set_core_precision(detector.model, precision)
        predictor = make_predictor(detector, device=args.device)
        image = big.astype(np.float32) / 255
        tiled_proposals(image[:512, :512], predictor)  # warm-up
        t0 = time.perf_counter()
        tiled_proposals(image, predictor, tile=512, overlap=96)
        mp_s = image.shape[0] * image.shape[1] / 1e6 / (time.perf_counter() - t0)
        results[precision] = (step_s, mp_s)
        print(f"{precision}: train {step_s:.2f} s/step ({args.crop}^2, batch {args.batch}), "
              f"predict {mp_s:.3f} MP/s ({'trained' if args.detector else 'untrained'} model)")
    (s32, p32), (s16, p16) = results["fp32"], results["bf16"]
    print(f"bf16 vs fp32: training {s32 / s16:.2f}x faster, prediction {p16 / p32:.2f}x faster")
    from cellsynth.hardware import choose_precision

    print(f"precision auto on this machine: {choose_precision('auto', args.device)}")


if __name__ == "__main__":
    main()
