"""Prediction speed of a trained detector: the path as it was vs as it is, same images, same run.

    python benchmarks/predict.py --detector RUN --images DIR [--mosaic 4] [--threads N]

Baseline: the checkpoint loaded as before (BatchNorm as separate layers, NCHW tensors), tiles
of 512 with 96 px overlap, 4 tiles per forward pass, cells painted one polygon at a time by
skimage.draw.polygon. Candidates: the same with the inference preparation (BatchNorm folded
into the convolutions, channels-last); then with balanced tiles of up to 1024 px, one per
pass (no larger than needed for as few tiles: less computed twice where the last tile would
stick out); then also with the scanline painting of a few hundred cells per numpy call
(tiles.cell_masks), which is what `cellsynth predict` does. All settings ask the CPN only for
proposals at or above the threshold (predict.score_floor). Each runs
on the images of DIR as they are (the nissl test images are 512^2: one tile) and on a
``--mosaic`` x ``--mosaic`` mosaic of them (what a section's interior sees: tiles overlap).
Printed: MP/s per setting, the ratio to the baseline, and how far the labels moved (pixels
that changed id class, and F1@0.5 of the new cells against the baseline's).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import torch

    from cellsynth.evaluate import matching
    from cellsynth.hardware import choose_precision, configure_threads
    from cellsynth.io.datasets import load_dataset
    from cellsynth.segment import predict, tiles
    from cellsynth.segment.cpn import build_model
    from cellsynth.segment.predict import Detector, load_detector, predict_image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", type=Path, required=True, help="a `cellsynth train` run")
    parser.add_argument("--images", type=Path, required=True, help="dataset or image folder")
    parser.add_argument("--mosaic", type=int, default=4)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timings")
    parser.add_argument("--max-setting", type=int, default=5, help="run the first N settings "
                        "(the fifth, bf16, only on a CPU with native bf16)")
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    fast = load_detector(args.detector, precision="fp32")
    _, ckpt = predict.read_detector_checkpoint(args.detector)
    plain_model = build_model(**ckpt["model_spec"])
    plain_model.load_state_dict(ckpt["model"])
    plain_model.eval()
    plain = Detector(**{**fast.__dict__, "model": plain_model})
    images = [s.read_image() for s in load_dataset(args.images)]
    side = min(min(im.shape[:2]) for im in images)
    crops = [im[:side, :side] for im in images]
    rows = [np.concatenate([np.rot90(crops[(i * args.mosaic + j) % len(crops)], i + j)
                            for j in range(args.mosaic)], axis=1) for i in range(args.mosaic)]
    mosaic = np.concatenate(rows, axis=0)
    settings = [("before: BatchNorm layers, NCHW, tile 512 x 4", plain, 512, 4, False, False),
                ("folded + channels-last, tile 512 x 4", fast, 512, 4, False, False),
                ("+ balanced tiles <= 1024 x 1", fast, 1024, 1, True, False),
                ("+ scanline painting (cellsynth predict)", fast, 1024, 1, True, True)]
    chosen = choose_precision("auto")
    if chosen.name == "bf16":  # what cellsynth predict does on a CPU with native bf16
        half = load_detector(args.detector, precision="bf16")
        settings.append(("+ bf16 core (auto on this CPU)", half, 1024, 1, True, True))
    print(f"{len(images)} images of {args.images} and a {mosaic.shape[0]}^2 mosaic; "
          f"{threads} threads")
    baseline: dict[str, tuple[float, list[np.ndarray]]] = {}
    fastest = 0.0
    for name, detector, tile, batch, balance, scanline in settings[:args.max_setting]:
        tiles._SCANLINE = scanline
        for label, inputs in (("images", images), ("mosaic", [mosaic])):
            best, labels = np.inf, []
            for _ in range(args.repeats):
                started = time.perf_counter()
                labels = [predict_image(detector, im, tile=tile, overlap=96, batch=batch,
                                        balance=balance) for im in inputs]
                best = min(best, time.perf_counter() - started)
            mp_s = sum(im.shape[0] * im.shape[1] for im in inputs) / 1e6 / best
            fastest = max(fastest, mp_s)
            if label not in baseline:
                baseline[label] = (mp_s, labels)
                print(f"{name:48s} {label:6s} {mp_s:6.3f} MP/s (baseline)")
                continue
            base_mp_s, base_labels = baseline[label]
            moved = np.mean([np.mean((a > 0) != (b > 0)) for a, b in zip(labels, base_labels)])
            f1 = np.mean([matching(b, a, thresholds=(0.5,)).f1[0]
                          for a, b in zip(labels, base_labels)])
            same = all(np.array_equal(a, b) for a, b in zip(labels, base_labels))
            print(f"{name:48s} {label:6s} {mp_s:6.3f} MP/s = {mp_s / base_mp_s:.2f}x; labels "
                  f"{'identical' if same else f'{moved:.2%} of pixels moved, F1@0.5 {f1:.3f}'} "
                  f"vs baseline")
    tiles._SCANLINE = True
    roofline(fast.model, fast.in_channels, fastest)
    torch.set_num_threads(threads)


def roofline(model, channels: int, measured_mp_s: float) -> None:
    """How far prediction can go with this network on this CPU: the network's multiply-adds
    per pixel (its convolutions, counted on a 256^2 input) against what one large 3x3
    convolution reaches here (64 -> 64 channels, 4 x 256^2, channels-last, fp32)."""
    import torch

    from cellsynth.segment.cpn import macs_per_pixel

    per_px = macs_per_pixel(model, channels)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    x = torch.rand(4, 64, 256, 256).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        conv(x)
        best = np.inf
        for _ in range(5):
            started = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - started)
    gmac_s = 4 * 256**2 * 64 * 64 * 9 / best / 1e9
    bound = gmac_s * 1e9 / per_px / 1e6
    print(f"roofline (fp32): the network needs {per_px / 1e3:.0f} kMAC per pixel; a large 3x3 "
          f"convolution runs at {gmac_s:.0f} GMAC/s here, so at most {bound:.2f} MP/s; "
          f"the best setting above reached {measured_mp_s:.3f} MP/s "
          f"({measured_mp_s / bound:.0%} of that bound)")


if __name__ == "__main__":
    main()
