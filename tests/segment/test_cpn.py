"""The CPN models cellsynth builds: tiny_u22 is slim_u22 at half the channels, trains, and its
checkpoints load through cellsynth and through celldetection's own loader."""

import numpy as np
import pytest
import torch

from cellsynth.segment.cpn import build_model, macs_per_pixel


def test_tiny_u22_is_slim_u22_at_half_the_channels():
    import celldetection as cd

    from cellsynth.segment.cpn import CpnTinyU22

    slim = build_model(in_channels=1, model="slim_u22", order=4, samples=16)
    tiny = build_model(in_channels=1, model="tiny_u22", order=4, samples=16)
    as_slim = CpnTinyU22(1, order=4, samples=16, refinement_iterations=4, base_channels=32)
    shapes = [tuple(p.shape) for p in slim.parameters()]
    assert shapes == [tuple(p.shape) for p in as_slim.parameters()]
    assert isinstance(tiny, cd.models.CPN)
    ratio = macs_per_pixel(slim, 1, size=64) / macs_per_pixel(tiny, 1, size=64)
    assert 3.5 < ratio < 4.5, ratio
    parameters = [sum(p.numel() for p in m.parameters()) for m in (slim, tiny)]
    assert parameters[1] < 0.3 * parameters[0]


def test_tiny_u22_trains_and_loads_by_name(tmp_path):
    import celldetection as cd

    from cellsynth.segment.predict import load_detector, predict_image
    from cellsynth.segment.trainer import TrainConfig, train
    from cellsynth.simulate import preset, write_simulation

    sim = tmp_path / "sim"
    write_simulation(preset("fluo"), n=2, size=64, seed=0, out=sim, progress=False)
    config = TrainConfig(model="tiny_u22", steps=3, crop=64, batch=2, samples=32, order=4,
                         refinement_iterations=1, val_every=1000)
    train(config, [sim], tmp_path / "run", progress=False)
    detector = load_detector(tmp_path / "run")
    assert type(detector.model).__name__ == "CpnTinyU22"
    image = np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)
    labels = predict_image(detector, image)
    assert labels.shape == (64, 64)
    # celldetection's own loader rebuilds the same network from the checkpoint's entries
    model = cd.load_model(str(tmp_path / "run" / "last.pt"), map_location="cpu")
    assert type(model).__name__ == "CpnTinyU22"
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    assert sorted(model.state_dict()) == sorted(saved)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_head_kernel_shrinks_the_heads_and_checkpoints_rebuild_it(tmp_path):
    import celldetection as cd
    import pytest

    from cellsynth.segment.predict import load_detector
    from cellsynth.segment.trainer import TrainConfig, train
    from cellsynth.simulate import preset, write_simulation

    wide = build_model(in_channels=3, model="slim_u22")
    small = build_model(in_channels=3, model="slim_u22", head_kernel=3)
    heads = [m for n, m in small.named_modules()
             if isinstance(m, torch.nn.Conv2d) and n.endswith("_head.block.0")]
    assert len(heads) == 4 and all(m.kernel_size == (3, 3) for m in heads)
    # the heads' 7x7 convolutions are about half of CpnSlimU22's arithmetic
    ratio = macs_per_pixel(wide, 3, size=64) / macs_per_pixel(small, 3, size=64)
    assert 1.6 < ratio < 1.9, ratio
    with pytest.raises(ValueError, match="head_kernel must be an odd number"):
        build_model(in_channels=3, head_kernel=4)

    sim = tmp_path / "sim"
    write_simulation(preset("fluo"), n=2, size=64, seed=0, out=sim, progress=False)
    config = TrainConfig(model="tiny_u22", head_kernel=3, steps=2, crop=64, batch=2,
                         samples=32, order=4, refinement_iterations=1, val_every=1000)
    train(config, [sim], tmp_path / "run", progress=False)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ckpt["model_spec"]["head_kernel"] == 3
    detector = load_detector(tmp_path / "run")
    assert detector.model.core.score_head.block[0].kernel_size == (3, 3)
    model = cd.load_model(str(tmp_path / "run" / "last.pt"), map_location="cpu")
    assert model.core.fourier_head.block[0].kernel_size == (3, 3)
    # the default (7) leaves the spec as checkpoints from before the option wrote it
    plain = TrainConfig(model="tiny_u22", steps=1, crop=64, batch=2, samples=32, order=4,
                        refinement_iterations=1, val_every=1000)
    train(plain, [sim], tmp_path / "plain", progress=False)
    spec = torch.load(tmp_path / "plain" / "last.pt", weights_only=False)["model_spec"]
    assert "head_kernel" not in spec


def test_importing_the_detector_leaves_qts_plugin_path_as_it_was():
    """opencv-python, which celldetection needs, points Qt at its own plugins on import; a
    napari window opened afterwards in the same script then aborted the process ("Could not
    load the Qt platform plugin xcb"). Importing cellsynth's detector module keeps the
    variables as they were: unset stays unset, a user's own value stays."""
    import subprocess
    import sys

    code = ("import os, sys\n"
            "os.environ.pop('QT_QPA_PLATFORM_PLUGIN_PATH', None)\n"
            "os.environ['QT_QPA_FONTDIR'] = '/my/fonts'\n"
            "import cellsynth.segment.cpn\n"
            "print(os.environ.get('QT_QPA_PLATFORM_PLUGIN_PATH'), os.environ['QT_QPA_FONTDIR'],"
            " 'cv2' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["None", "/my/fonts", "True"]


def test_cell_pixel_weights_count_each_cell_of_each_image_alike():
    from cellsynth.segment.cpn import cell_pixel_weights

    labels = torch.zeros(2, 6, 6, dtype=torch.int64)
    labels[0, :3, :3] = 1          # 9 pixels
    labels[0, 5, 5] = 2            # 1 pixel
    labels[1, :2, :2] = 1          # 4 pixels: id 1 again, another image, another cell
    labels[1, 4, 4] = -1           # ignored pixels are not cells
    fg = labels > 0
    key = (torch.arange(2)[:, None, None] * 10 + labels)[fg]
    plain = cell_pixel_weights(labels, fg, 0.0)
    assert torch.allclose(plain, torch.ones(14))
    equal = cell_pixel_weights(labels, fg, 1.0)
    totals = [float(equal[key == k].sum()) for k in (1, 2, 11)]
    assert np.allclose(totals, totals[0]), totals
    assert abs(float(equal.mean()) - 1.0) < 1e-6
    sqrt = cell_pixel_weights(labels, fg, 0.5)
    assert float(sqrt[key == 2][0] / sqrt[key == 1][0]) == pytest.approx(3.0)


def _score_loss(model, labels):
    from cellsynth.segment.cpn import collate, training_targets

    item = training_targets(labels, samples=16, order=4, rng=np.random.default_rng(0))
    item["inputs"] = np.random.default_rng(1).random((*labels.shape, 1), np.float32)
    batch = collate([item])
    torch.manual_seed(0)  # (the heads' dropout is on in training mode)
    with torch.no_grad():
        out = model(batch["inputs"], targets=batch)
    return float(out["losses"]["score"])


def test_score_balance_changes_the_score_loss_only_where_cells_differ_in_size():
    from cellsynth.segment.cpn import balance_score_loss

    torch.manual_seed(0)
    # (training mode: in eval mode celldetection scores against its own predicted classes)
    model = build_model(in_channels=1, model="tiny_u22", order=4, samples=16).train()
    yy, xx = np.mgrid[:64, :64]
    same = np.zeros((64, 64), np.int32)
    same[(yy - 16) ** 2 + (xx - 16) ** 2 < 64] = 1
    same[(yy - 44) ** 2 + (xx - 44) ** 2 < 64] = 2
    unequal = same.copy()
    unequal[unequal == 2] = 0
    unequal[(yy - 44) ** 2 + (xx - 44) ** 2 < 196] = 2
    plain = [_score_loss(model, same), _score_loss(model, unequal)]
    balance_score_loss(model, 1.0)
    balanced = [_score_loss(model, same), _score_loss(model, unequal)]
    assert balanced[0] == pytest.approx(plain[0], rel=1e-5)  # cells of one size: no change
    assert abs(balanced[1] - plain[1]) > 1e-4 * plain[1]
    balance_score_loss(model, 0.0)  # undone
    assert _score_loss(model, unequal) == pytest.approx(plain[1], rel=1e-6)
    assert "compute_loss" not in model.__dict__


def test_score_balance_is_checked_and_trains(tmp_path):
    from cellsynth.segment.trainer import TrainConfig, train
    from cellsynth.simulate import preset, write_simulation

    with pytest.raises(ValueError, match="score_balance"):
        TrainConfig(score_balance=1.5)
    sim = tmp_path / "sim"
    write_simulation(preset("fluo"), n=2, size=64, seed=0, out=sim, progress=False)
    config = TrainConfig(model="tiny_u22", steps=2, crop=64, batch=2, samples=16, order=4,
                         refinement_iterations=1, val_every=1000, score_balance=0.5)
    summary = train(config, [sim], tmp_path / "run", progress=False)
    assert np.isfinite(summary["loss"])
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert saved["config"]["score_balance"] == 0.5
