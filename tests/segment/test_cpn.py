"""The CPN models cellsynth builds: tiny_u22 is slim_u22 at half the channels, trains, and its
checkpoints load through cellsynth and through celldetection's own loader."""

import numpy as np
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
