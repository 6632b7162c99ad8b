"""Semantic consistency: a frozen judge must see the same cells in the refined image."""

import json

import numpy as np
import pytest
import torch

from cellsynth.refine.consistency import consistency_loss, judge_targets, train_judge

SIZE = 48


def _scene(rng, n_cells=4):
    """A dark-cells-on-bright Nissl-like crop in [-1, 1] and its labels."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    labels = np.zeros((SIZE, SIZE), np.int64)
    image = np.full((SIZE, SIZE), 0.6)
    k = 0
    for _ in range(50):
        if k == n_cells:
            break
        cy, cx, r = rng.uniform(6, SIZE - 6), rng.uniform(6, SIZE - 6), rng.uniform(4, 7)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
        if labels[disk].any():
            continue
        k += 1
        labels[disk] = k
        image[disk] = rng.uniform(-0.6, -0.2)
    image += rng.normal(0, 0.05, image.shape)
    return image.astype(np.float32), labels


def _sample(n, rng):
    scenes = [_scene(rng) for _ in range(n)]
    images = torch.from_numpy(np.stack([s[0] for s in scenes]))[:, None]  # (n, 1, H, W)
    return images, torch.from_numpy(np.stack([s[1] for s in scenes]))


@pytest.fixture(scope="module")
def judge():
    return train_judge(_sample, 1, steps=60, batch=8, seed=0)


def test_the_judge_learns_the_layout(judge):
    images, labels = _sample(8, np.random.default_rng(99))
    with torch.no_grad():
        predicted = judge(images).argmax(dim=1)
    target = judge_targets(labels)
    assert (predicted == target).float().mean() > 0.85
    cell = target > 0
    assert (predicted[cell] > 0).float().mean() > 0.8  # cells are found, not just background


def test_the_loss_is_zero_for_identical_images_and_grows_with_each_changed_cell(judge):
    images, labels = _sample(4, np.random.default_rng(7))
    assert consistency_loss(judge, images, images).item() == pytest.approx(0.0, abs=1e-6)
    erased = []
    changed = images.clone()
    for cell in (1, 2):  # one cell, then two, faded into the background
        changed[:, 0][labels == cell] = 0.6
        erased.append(consistency_loss(judge, changed, images).item())
    assert 0 < erased[0] < erased[1]
    # a harmless change of brightness and contrast costs far less than one lost cell
    restyled = (images * 0.7 + 0.1).clamp(-1, 1)
    assert consistency_loss(judge, restyled, images).item() < 0.3 * erased[0]


def test_gradients_reach_the_refined_image_only(judge):
    images, _ = _sample(2, np.random.default_rng(3))
    refined = (images * 0.9).requires_grad_(True)
    consistency_loss(judge, refined, images).backward()
    assert refined.grad.abs().sum() > 0
    assert all(p.grad is None for p in judge.parameters())


def test_judge_training_is_deterministic():
    a = train_judge(_sample, 1, steps=3, batch=2, seed=5)
    b = train_judge(_sample, 1, steps=3, batch=2, seed=5)
    c = train_judge(_sample, 1, steps=3, batch=2, seed=6)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_a_refiner_with_consistency_trains_and_resumes_with_the_same_judge(
        tiny, sim_dir, real_dir, tmp_path):
    from dataclasses import replace

    from cellsynth import refine
    from cellsynth.refine.trainer import read_checkpoint

    config = replace(tiny, consistency=1.0, consistency_steps=2, steps=2)
    run = tmp_path / "run"
    refine.fit(config, sim_dir, real_dir, run, progress=False)
    judge = read_checkpoint(run / "last.pt")["judge"]
    refine.fit(replace(config, steps=4), sim_dir, real_dir, run, resume=True, progress=False)
    after = read_checkpoint(run / "last.pt")
    assert after["step"] == 4
    assert all(torch.equal(judge[k], after["judge"][k]) for k in judge)  # frozen, restored
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all(row["consistency"] >= 0 for row in logged) and len(logged) == 4
