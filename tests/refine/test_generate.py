import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cellsynth.errors import DatasetError
from cellsynth.io.datasets import load_dataset
from cellsynth.io.images import to_uint8, write_image, write_labels
from cellsynth.io.normalize import normalize
from cellsynth.refine import fit, label_fidelity, load_refiner, refine_dataset, refine_images
from cellsynth.refine.generate import Refiner
from tests.conftest import make_dataset


@pytest.fixture
def run(tiny, sim_dir, real_dir, tmp_path):
    fit(tiny, sim_dir, real_dir, tmp_path / "run", progress=False)
    return tmp_path / "run"


def test_generate_keeps_labels_byte_identical(run, sim_dir, tmp_path):
    # one image of an odd size the generator cannot take directly
    write_image(sim_dir / "images" / "odd.png", np.full((30, 37, 3), 120, np.uint8))
    lab = np.zeros((30, 37), np.uint16)
    lab[5:15, 5:20] = 7
    write_labels(sim_dir / "labels" / "odd.tif", lab)
    out = tmp_path / "refined"
    summary = refine_dataset(run, sim_dir, out, batch=2, progress=False)
    assert summary["n_images"] == 4
    src, dst = load_dataset(sim_dir), load_dataset(out)
    assert [s.id for s in src] == [s.id for s in dst]
    for a, b in zip(src, dst):
        assert a.label_path.read_bytes() == b.label_path.read_bytes()
        assert b.read_image().shape == a.read_image().shape
        assert b.read_image().dtype == np.uint8
    meta = json.loads((out / "meta.json").read_text())
    assert meta["refiner"]["step"] == 4 and meta["pixel_size_um"] == 0.5
    # a 4-step refiner barely departs from the simulation: (nearly) every cell survives
    assert meta["label_fidelity"]["preserved"] >= 0.9
    assert (out / "preview.png").is_file()
    assert not (out / "classes").exists()  # a simulation without class maps gives none


def test_generate_is_seeded(run, sim_dir):
    refiner = load_refiner(run)
    ds = load_dataset(sim_dir)
    images, labels = zip(*(s.read() for s in ds))
    a = refine_images(refiner, images, labels, seed=1)
    b = refine_images(refiner, images, labels, seed=1)
    c = refine_images(refiner, images, labels, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))  # the noise channel matters


def test_generate_needs_labels_and_matching_channels(run, tmp_path):
    no_labels = make_dataset(tmp_path / "nolab", rgb=True, labels=False)
    with pytest.raises(DatasetError, match="no label file"):
        refine_dataset(run, no_labels, tmp_path / "out1", progress=False)
    gray = make_dataset(tmp_path / "gray", rgb=False)
    with pytest.raises(DatasetError, match="1 channel"):
        refine_dataset(run, gray, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists()  # nothing half-written


def test_label_fidelity_by_hand():
    labels = np.zeros((20, 20), np.uint16)
    labels[5:12, 5:12] = 1
    sim = np.full((20, 20), 200, np.uint8)
    sim[labels > 0] = 60  # a dark cell on a bright background
    same = label_fidelity([sim], [sim], [labels])
    assert same.n_instances == 1 and same.preserved == 1.0
    inverted = label_fidelity([sim], [255 - sim], [labels])
    assert inverted.contrast_preserved == 0.0 and inverted.preserved == 0.0
    grown = sim.copy()
    grown[2:15, 2:15] = 60  # the cell grew 3 px past its label: no edge where the label is
    result = label_fidelity([sim], [grown], [labels])
    assert result.contrast_preserved == 1.0 and result.boundary_preserved == 0.0


class _ShiftRight(torch.nn.Module):
    """A stand-in generator that moves the image 8 px to the right (reveals the context)."""

    channels = 1

    def forward(self, x, segmap, generator=None):
        return torch.roll(x, 8, dims=-1)


def test_whole_images_are_refined_with_mirrored_context(tiny):
    refiner = Refiner(_ShiftRight(), tiny, step=0, checkpoint=Path("none"),
                      device=torch.device("cpu"), bf16=False)
    image = np.tile(np.arange(64, dtype=np.uint8) * 4, (40, 1))  # a ramp: column x -> 4x
    (out,) = refine_images(refiner, [image], [np.zeros((40, 64), np.uint16)])
    assert out.shape == image.shape
    image = to_uint8(normalize(image))  # what the refiner sees (the ramp stretched to 0-1)
    np.testing.assert_array_equal(out[:, 8:], image[:, :-8])
    # the first 8 columns come from the mirrored border (column 8-x), not from zero padding
    # or the far edge of the image
    np.testing.assert_array_equal(out[0, :8], image[0, 8:0:-1])


def test_class_map_conditioning_fits_generates_and_needs_the_class_maps(tiny, real_dir,
                                                                        tmp_path):
    from dataclasses import replace

    from cellsynth.refine.data import read_layout
    from cellsynth.refine.spade import semantic_map
    from cellsynth.simulate import preset, write_simulation

    sim = tmp_path / "sim"
    write_simulation(preset("nissl"), n=3, size=48, seed=0, out=sim, progress=False)
    run = tmp_path / "run"
    fit(replace(tiny, class_map=True), sim, real_dir, run, progress=False)
    refiner = load_refiner(run)
    assert refiner.config.class_map
    assert refiner.generator.norm_out.shared[0].in_channels == 6  # 3 semantic + 3 classes
    out = tmp_path / "refined"
    refine_dataset(run, sim, out, progress=False)
    for a, b in zip(load_dataset(sim), load_dataset(out)):
        assert a.label_path.read_bytes() == b.label_path.read_bytes()
        # the class maps come along (a refined set lacked them: no class_map refiner could
        # be fitted on it), byte for byte
        drawn = f"classes/{a.id}.png"
        assert (out / drawn).read_bytes() == (sim / drawn).read_bytes()
    assert read_layout(load_dataset(out).samples[0], load_dataset(out).samples[0].read()[1]) \
        .min() < 0
    # the class channels reach the generator: other classes, other image
    sample = load_dataset(sim).samples[0]
    image, labels = sample.read()
    layout = read_layout(sample, labels)
    assert (layout < 0).any()
    assert semantic_map(torch.from_numpy(layout)[None], class_map=True).shape[1] == 6
    plain = np.where(layout > 0, layout, 0)
    a, b = refine_images(refiner, [image, image], [layout, plain], seed=0)
    assert np.abs(a.astype(int) - b.astype(int)).max() > 0
    (sim / "classes" / "0000.png").unlink()  # a simulation without class maps: one clear error
    with pytest.raises(DatasetError, match="classes/0000.png: missing; class_map: true"):
        refine_dataset(run, sim, tmp_path / "refined2", progress=False)


def test_semantic_map_with_classes_is_one_hot_and_without_them_unchanged():
    from cellsynth.refine.spade import scene_layout, semantic_map

    labels = np.zeros((12, 12), np.int32)
    labels[2:7, 2:7] = 5
    classes = np.zeros((12, 12), np.uint8)
    classes[labels > 0] = 1
    classes[8:11, 8:11] = 2   # a blob
    classes[0, :] = 4         # a fibre
    classes[9:12, 0:3] = 3    # a vessel
    layout = scene_layout(labels, classes)
    with_classes = semantic_map(torch.from_numpy(layout)[None], class_map=True)[0]
    assert with_classes.shape[0] == 6 and torch.all(with_classes.sum(0) == 1)
    for channel, where in ((3, classes == 2), (4, classes == 3), (5, classes == 4)):
        assert torch.equal(with_classes[channel].bool(), torch.from_numpy(where)), channel
    assert torch.equal(with_classes[0].bool(), torch.from_numpy(classes == 0))
    plain = semantic_map(torch.from_numpy(labels)[None])[0]
    assert torch.equal(with_classes[1:3], plain[1:3])  # cells: same interior and boundary
    with pytest.raises(ValueError, match="scene_layout"):
        scene_layout(labels, classes[:5])
