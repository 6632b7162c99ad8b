"""fit-simulator: parameters of simulated images are recovered from the images alone, the fit
is deterministic, never opens a label file, writes a config `simulate --config` reads back,
and user mistakes are one line naming the path."""

import builtins
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from cellsynth.cli import main
from cellsynth.errors import ConfigError, DatasetError
from cellsynth.io import write_dataset_meta
from cellsynth.io.images import read_image, write_image, write_labels
from cellsynth.simulate import preset, simulate, simulation_config
from cellsynth.simulate.fit import fit_simulator, format_fit, match_statistics, write_fit
from cellsynth.simulate.presets import Variation

PX = 0.8  # coarse pixels: a few hundred cells in six 192 px images, so statistics are stable


def _base():
    base = preset("he", pixel_size_um=PX)
    # no layer bands: their density waves would make six small images a noisy sample
    return replace(base, layers=replace(base.layers, density_contrast=0.0, size_contrast=0.0))


def _scaled(config, *, size=1.0, density=1.0, stain=1.0):
    return replace(config, cells=tuple(
        replace(c, diameter_um=(c.diameter_um[0] * size, c.diameter_um[1] * size),
                density=c.density * density, stain=(c.stain[0] * stain, c.stain[1] * stain))
        for c in config.cells))


def median_diameter_um(config):
    """Density-weighted median of the labelled cell types' uniform diameter ranges (um)."""
    cells = [c for c in config.cells if c.labeled]
    grid = np.linspace(1.0, 40.0, 39001)
    cdf = sum(c.density * np.clip((grid - c.diameter_um[0])
                                  / (c.diameter_um[1] - c.diameter_um[0]), 0, 1) for c in cells)
    return float(grid[np.searchsorted(cdf, cdf[-1] / 2)])


def _density(config):
    return sum(c.density for c in config.cells if c.labeled)


@pytest.fixture(scope="module")
def fits():
    """Known configs (smaller, denser, darker, noisier and blurrier cells than the base; and
    1.5x larger cells at the same cell coverage) and what the fit makes of their images."""
    base = _base()
    small = _scaled(base, size=0.8, density=1.2, stain=1.4)
    small = replace(small, optics=replace(small.optics, blur_um=0.6, shot_noise=0.024,
                                          read_noise=0.01))
    large = _scaled(small, size=1.5, density=1 / 1.5**2)
    truths = {"small": small, "large": large}
    return truths, {name: fit_simulator([image for image, _ in simulate(t, 6, 192, seed=7)],
                                        base) for name, t in truths.items()}


def test_recovers_cell_size_and_density_within_15_percent(fits):
    truths, fitted = fits
    for name, truth in truths.items():
        assert fitted[name].pixel_size_um == PX
        assert median_diameter_um(fitted[name]) == pytest.approx(median_diameter_um(truth),
                                                                 rel=0.15)
        assert _density(fitted[name]) == pytest.approx(_density(truth), rel=0.15)


def test_larger_cells_give_a_proportionally_larger_fit(fits):
    _, fitted = fits
    base = median_diameter_um(_base())
    small, large = median_diameter_um(fitted["small"]), median_diameter_um(fitted["large"])
    assert small < base < large  # moved away from the base in both directions
    assert large / small == pytest.approx(1.5, rel=0.15)
    assert _density(fitted["large"]) < 0.6 * _density(fitted["small"])  # truth: 1 / 2.25


def test_recovers_stain_noise_and_blur(fits):
    truths, fitted = fits
    truth, fit = truths["small"], fitted["small"]
    assert fit.cells[0].stain[1] == pytest.approx(truth.cells[0].stain[1], rel=0.15)
    assert fit.optics.shot_noise == pytest.approx(truth.optics.shot_noise, rel=0.25)
    assert fit.optics.blur_um == pytest.approx(truth.optics.blur_um, rel=0.25)
    assert fit.background.counterstain[1] == pytest.approx(truth.background.counterstain[1],
                                                           rel=0.25)


def _elongation_factor(fitted, base):
    """The factor the fit applied to every cell type's elongation excess (axis ratio - 1)."""
    return [(f.elongation[1] - 1) / (b.elongation[1] - 1)
            for f, b in zip(fitted.cells, base.cells)]


def test_elongation_moves_with_the_cells_and_not_without_them():
    base = preset("nissl", pixel_size_um=PX)
    base = replace(base, layers=replace(base.layers, density_contrast=0.0, size_contrast=0.0))
    longer = replace(base, cells=tuple(
        replace(c, elongation=(1 + 2.5 * (c.elongation[0] - 1), 1 + 2.5 * (c.elongation[1] - 1)))
        for c in base.cells))
    fit_longer = fit_simulator([im for im, _ in simulate(longer, 6, 192, seed=7)], base)
    fit_same = fit_simulator([im for im, _ in simulate(base, 6, 192, seed=7)], base)
    # weakly identifiable (see fit._KNOBS): the direction and most of the way, no drift
    assert all(1.6 < f < 3.2 for f in _elongation_factor(fit_longer, base))
    assert all(0.8 < f < 1.25 for f in _elongation_factor(fit_same, base))


def test_spread_floor_keeps_the_base_variety_and_fitted_follows_quiet_images():
    # fluo: there the estimator tells the stain variation between cells (quiet images of
    # variation 0.02 fit 0.00-0.03); on he it cannot (0.15-0.18 fitted, seeds 0-1), the
    # nuclei's own stain range and the eosin bodies under them swamp it
    base = preset("fluo", pixel_size_um=PX)
    quiet = replace(base, optics=replace(base.optics, shot_noise=0.25 * base.optics.shot_noise,
                                         read_noise=0.25 * base.optics.read_noise),
                    staining=replace(base.staining, cell_variation=0.02))
    images = [image for image, _ in simulate(quiet, 4, 160, seed=7)]
    measured = fit_simulator(images, base, spread="fitted")
    fit = match_statistics(images, base)  # spread="floor", the default
    floored = fit.config
    assert measured.optics.shot_noise < 0.6 * base.optics.shot_noise
    assert measured.staining.cell_variation < base.staining.cell_variation
    assert floored.optics.shot_noise == pytest.approx(base.optics.shot_noise)
    assert floored.optics.read_noise == pytest.approx(base.optics.read_noise)
    assert floored.staining.cell_variation == pytest.approx(base.staining.cell_variation)
    # the floor touches the variety only: sizes, densities and stains are the same fit
    assert floored.cells == measured.cells and floored.background == measured.background
    assert floored.optics.blur_um == measured.optics.blur_um
    # and says so, with what it measured
    assert fit.floored["shot noise"] == (measured.optics.shot_noise, floored.optics.shot_noise)
    assert fit.floored["stain variation between cells"] == (
        measured.staining.cell_variation, base.staining.cell_variation)
    assert "kept at the base's" in format_fit(fit)


def test_unknown_spread_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="spread must be one of floor, fitted, got 'wide'"):
        write_fit(tmp_path / "missing", "he", tmp_path / "f.yaml", spread="wide")
    assert not (tmp_path / "f.yaml").exists()


def _images(n=2, size=96, seed=1):
    return [image for image, _ in simulate(_base(), n, size, seed=seed)]


def test_same_seed_same_fit():
    images = _images()
    assert fit_simulator(images, _base(), seed=3) == fit_simulator(images, _base(), seed=3)


def _dataset(root: Path, n=2, size=96) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, (image, labels) in enumerate(simulate(preset("he", pixel_size_um=PX), n, size,
                                                 seed=2)):
        write_image(root / "images" / f"{i}.png", image)
        write_labels(root / "labels" / f"{i}.tif", labels)
    return root


def test_yaml_round_trips_through_simulate_config(tmp_path):
    summary = write_fit(_dataset(tmp_path / "real"), "he", tmp_path / "fitted.yaml",
                        pixel_size_um=PX)
    fitted = summary["fit"].config
    assert simulation_config("he", config_file=tmp_path / "fitted.yaml") == fitted
    assert fitted != preset("he", pixel_size_um=PX)
    assert summary["preview"] == tmp_path / "fitted-preview.png"
    assert summary["preview"].is_file()


def test_cli_reads_no_label_file_and_its_yaml_simulates(tmp_path, monkeypatch, capsys):
    real = _dataset(tmp_path / "real")
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, Path)) and "labels" in Path(file).parts:
            raise AssertionError(f"label file opened: {file}")
        return real_open(file, *args, **kwargs)

    def no_labels(path, *args, **kwargs):
        raise AssertionError(f"labels read: {path}")

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr("cellsynth.io.images.read_labels", no_labels)
    monkeypatch.setattr("cellsynth.io.datasets.read_labels", no_labels)
    out = tmp_path / "fitted.yaml"
    assert main(["fit-simulator", "--real", str(real), "--preset", "he", "--out", str(out),
                 "--pixel-size", str(PX), "--stains", "measured"]) == 0
    printed = capsys.readouterr().out
    assert "median cell diameter (um)" in printed and "fitted sim" in printed
    assert "counter_vector" in out.read_text() and "stains measured" in out.read_text()
    assert (tmp_path / "fitted-preview.png").is_file()
    monkeypatch.undo()
    sim = tmp_path / "sim"
    assert main(["simulate", "--preset", "he", "--config", str(out), "--n", "1", "--size", "64",
                 "--out", str(sim), "--quiet"]) == 0
    assert (sim / "images").is_dir()
    # a second fit never overwrites the first silently
    before = out.read_text()
    argv = ["fit-simulator", "--real", str(real), "--preset", "he", "--out", str(out),
            "--pixel-size", str(PX), "--seed", "3"]
    _one_line_error(capsys, argv, "exists; choose another name or pass --force")
    assert out.read_text() == before
    assert main(argv + ["--force"]) == 0 and "seed 3" in out.read_text()


def test_the_fit_is_not_written_among_the_images_it_reads(tmp_path, capsys):
    """`--out REAL/fitted.yaml` on a flat folder of images put fitted-preview.png (real |
    fitted | base, 3 channels) beside them, and every later command read it as one more real
    image; refused before the fit, as predict and evaluate refuse their outputs there. A
    dataset folder's root (images in images/) stays a fine place for it."""
    import shutil

    from cellsynth.simulate import write_simulation

    write_simulation(preset("fluo"), n=2, size=96, seed=0, out=tmp_path / "sim",
                     progress=False)
    flat = shutil.copytree(tmp_path / "sim" / "images", tmp_path / "flat")
    before = sorted(p.name for p in flat.iterdir())
    argv = ["fit-simulator", "--real", str(flat), "--preset", "fluo", "--out",
            str(flat / "fitted.yaml"), "--pixel-size", "0.5"]
    _one_line_error(capsys, argv, "lies in the input")
    assert sorted(p.name for p in flat.iterdir()) == before
    dataset = tmp_path / "ds"
    shutil.copytree(flat, dataset / "images")  # (the same images in a dataset's folder)
    assert main(["fit-simulator", "--real", str(dataset), "--preset", "fluo", "--out",
                 str(dataset / "fitted.yaml"), "--pixel-size", "0.5", "--quiet"]) == 0
    assert sorted(p.name for p in (dataset / "images").iterdir()) == before
    assert (dataset / "fitted-preview.png").is_file()


def test_one_image_file_is_fitted_as_its_pixels_are(tmp_path, capsys):
    """`--real one.png` (one whole section, as predict and inspect take it) was "not a
    folder": it is fitted as the array it holds, at the pixel size of the dataset it is in;
    a file that is not an image is one line."""
    real = _dataset(tmp_path / "real", n=1, size=128)
    write_dataset_meta(real, {"pixel_size_um": PX})
    path = real / "images" / "0.png"
    alone = fit_simulator(path, _base(), seed=3)
    assert alone == fit_simulator([read_image(path)], _base(), pixel_size_um=PX, seed=3)
    assert main(["fit-simulator", "--real", str(path), "--preset", "he", "--out",
                 str(tmp_path / "f.yaml"), "--seed", "3", "--quiet"]) == 0
    assert simulation_config("he", config_file=tmp_path / "f.yaml") == fit_simulator(
        path, "he", seed=3)  # (the CLI's base is the plain preset)
    _one_line_error(capsys, ["fit-simulator", "--real", str(real / "labels" / "0.tif"),
                             "--preset", "he", "--out", str(tmp_path / "g.yaml")],
                    "a gray image, but preset 'he'")  # (a label TIFF is read as an image)
    (tmp_path / "notes.txt").write_text("x")
    _one_line_error(capsys, ["fit-simulator", "--real", str(tmp_path / "notes.txt"),
                             "--preset", "he", "--out", str(tmp_path / "h.yaml")],
                    "notes.txt: not an image file")


def test_cli_fits_from_a_base_config_and_keeps_its_overrides(tmp_path, capsys):
    """--config changes the base before the fit (as for simulate): what the fit does not
    touch, e.g. unlabelled cell bodies, stays in the fitted file."""
    real = _dataset(tmp_path / "real")
    base = tmp_path / "base.yaml"
    base.write_text("background: {bodies: 0.5, vacuoles: 3.0}\n")
    out = tmp_path / "fitted.yaml"
    assert main(["fit-simulator", "--real", str(real), "--preset", "he", "--config", str(base),
                 "--out", str(out), "--pixel-size", str(PX)]) == 0
    fitted = simulation_config("he", config_file=out)
    assert fitted.background.bodies == 0.5 and fitted.background.vacuoles == 3.0
    base.write_text("background: {bodies: 2.0}\n")  # not a fraction
    _one_line_error(capsys, ["fit-simulator", "--real", str(real), "--preset", "he", "--config",
                             str(base), "--out", str(tmp_path / "f2.yaml")], "background.bodies")
    assert not (tmp_path / "f2.yaml").exists()


def _one_line_error(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    return err


def test_empty_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images found"):
        fit_simulator(tmp_path / "empty", "he")
    _one_line_error(capsys, ["fit-simulator", "--real", str(tmp_path / "empty"), "--preset",
                             "he", "--out", str(tmp_path / "f.yaml")], str(tmp_path / "empty"))


def test_too_small_images_are_one_line(tmp_path, capsys):
    folder = tmp_path / "tiny"
    folder.mkdir()
    write_image(folder / "a.png", np.full((40, 200, 3), 200, np.uint8))
    with pytest.raises(DatasetError, match="a.png.*too small"):
        fit_simulator(folder, "he")
    _one_line_error(capsys, ["fit-simulator", "--real", str(folder), "--preset", "he",
                             "--out", str(tmp_path / "f.yaml")], str(folder / "a.png"))


def test_pixel_size_that_makes_cells_tiny_is_one_line(tmp_path, capsys):
    real = _dataset(tmp_path / "real")
    with pytest.raises(ConfigError, match="px across"):
        fit_simulator(real, "he", pixel_size_um=4.0)
    err = _one_line_error(capsys, ["fit-simulator", "--real", str(real), "--preset", "he",
                                   "--out", str(tmp_path / "f.yaml"), "--pixel-size", "4"],
                          str(real))
    assert "need >= 4 px" in err
    assert not (tmp_path / "f.yaml").exists()


def test_fit_simulator_channel_measures_that_channel_of_fluorescence_tiffs(tmp_path, capsys):
    """--channel 1 of 2-channel ImageJ TIFFs counts the nuclei that channel 1 holds, as the
    channel saved alone does; channel 0 (another marker: noise here) counts other things,
    and a channel the images lack is one line before any fitting."""
    import tifffile

    from cellsynth.simulate.fit import count_cells

    rng = np.random.default_rng(4)
    for name in ("two", "gray"):
        (tmp_path / name).mkdir()
    for i, (image, _) in enumerate(simulate("fluo", 2, 256, seed=5)):
        noise = rng.integers(0, 255, image.shape, dtype=np.uint8)
        tifffile.imwrite(tmp_path / "two" / f"a{i}.tif", np.stack([noise, image]),
                         imagej=True, metadata={"axes": "CYX"})
        write_image(tmp_path / "gray" / f"a{i}.png", image)
    _, gray = count_cells(tmp_path / "gray", "fluo")
    _, picked = count_cells(tmp_path / "two", "fluo", channel=1)
    assert [n for _, _, n, _ in picked] == [n for _, _, n, _ in gray]
    assert min(n for _, _, n, _ in gray) >= 3
    for (_, raw, _, _), (_, want, _, _) in zip(picked, gray):
        np.testing.assert_array_equal(raw, want)
    with pytest.warns(UserWarning) as said:
        _, first = count_cells(tmp_path / "two", "fluo")
    said = [str(w.message) for w in said]
    assert any("2 channels; using channel 0" in w for w in said), said
    # (channel 0, the noise, does not look like fluorescence: said before fitting it)
    assert any("two: 2 of 2 look gray" in w and "preset 'fluo' simulates bright nuclei" in w
               for w in said), said
    assert [n for _, _, n, _ in first] != [n for _, _, n, _ in gray]
    err = _one_line_error(capsys, ["fit-simulator", "--real", str(tmp_path / "two"),
                                   "--preset", "fluo", "--out", str(tmp_path / "f.yaml"),
                                   "--channel", "2"], "a0.tif")
    assert "channel 2 requested, but the image has 2 channel(s)" in err
    # on gray images (one channel) it was ignored without a word (audit 6): refused as well
    err = _one_line_error(capsys, ["fit-simulator", "--real", str(tmp_path / "gray"),
                                   "--preset", "fluo", "--out", str(tmp_path / "g.yaml"),
                                   "--channel", "2"], "a0.png")
    assert "channel 2 requested, but the image has 1 channel(s) (0-0)" in err
    assert not (tmp_path / "g.yaml").exists()
    # an OME-Zarr section is one image, not a folder of them: that check passes it to the fit
    # (it said "no images found" in it)
    import zarr

    from cellsynth.cli.commands import _check_channel

    section = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    section.create_array("0", data=np.zeros((2, 64, 64), np.uint8), chunks=(1, 32, 32))
    section.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}], "axes": [
        {"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
        {"name": "x", "type": "space"}]}]
    assert _check_channel(tmp_path / "s.zarr", 1) is None


def test_whole_section_is_measured_by_windows_of_tissue_not_decoded(tmp_path, monkeypatch):
    """A section (tiled, compressed, pyramidal TIFF: opened lazily) that is half empty glass:
    the fit measures windows of its tissue, and finds the cells the tissue images hold."""
    import tifffile

    from cellsynth.simulate import fit, fit_images

    tiles = [image for image, _ in simulate(_base(), 8, 192, seed=5)]
    tissue = np.concatenate([np.concatenate(tiles[i:i + 2], axis=1) for i in range(0, 8, 2)])
    section = np.full((768, 768, 3), 240, np.uint8)  # the right half: glass
    section[:, :384] = tissue
    root = tmp_path / "sections"
    root.mkdir()
    with tifffile.TiffWriter(root / "slide.ome.tif") as tif:
        tif.write(section, subifds=1, tile=(128, 128), compression="zlib", photometric="rgb")
        tif.write(section[::2, ::2], subfiletype=1, tile=(128, 128), compression="zlib",
                  photometric="rgb")
    monkeypatch.setattr(fit_images, "_WINDOW_ABOVE", 512 * 512)
    monkeypatch.setattr(fit_images, "_WINDOW", 192)
    import cellsynth.io.images as images

    def whole(path):
        raise AssertionError(f"{path} decoded whole")

    monkeypatch.setattr(images, "_read_array", whole)
    real = fit._load(root, _base(), PX)
    monkeypatch.undo()
    assert len(real.images) == fit_images._WINDOWS
    for name, image in zip(real.names, real.images):
        ys, xs = name.split("[")[1].rstrip("]").split(", ")
        x0, x1 = (int(v) for v in xs.split(":"))
        assert name.startswith(str(root / "slide.ome.tif")) and image.shape == (192, 192, 3)
        assert x0 + 96 <= 384, name  # at least half of the window on tissue
    measured, _ = fit._real_statistics(real, replace(_base(), pixel_size_um=PX))
    truth, _ = fit._real_statistics(fit._load(tiles, _base(), PX), replace(_base(),
                                                                           pixel_size_um=PX))
    assert measured["density"] == pytest.approx(truth["density"], rel=0.35)
    assert measured["diameter_um"] == pytest.approx(truth["diameter_um"], rel=0.15)


MAUVE = (0.25, 1.0, 0.4)  # an eosin that absorbs red and blue too, as tcga_lgg's does


def _mauve(config):
    return replace(config, staining=replace(config.staining, counter_vector=MAUVE))


def test_eosin_vector_is_measured_from_the_images():
    from cellsynth.simulate.estimate import measure_counter_vector

    def measured(config):
        return measure_counter_vector([image.astype(np.float32) / 255 for image, _ in
                                       simulate(config, 4, 160, seed=3)], "he")

    default = preset("he", pixel_size_um=PX)
    pink, mauve = measured(default), measured(_mauve(default))
    assert pink[1] == mauve[1] == 1.0  # scaled to absorb 1 in green, as the simulator's
    assert pink[0] == pytest.approx(0.071, abs=0.04) and pink[2] == pytest.approx(0.11, abs=0.04)
    assert mauve[0] == pytest.approx(MAUVE[0], abs=0.06)
    assert mauve[2] == pytest.approx(MAUVE[2], abs=0.06)
    # nothing to measure: another colour model, or blank slides
    assert measure_counter_vector([np.ones((64, 64, 3), np.float32)], "he") is None
    assert measure_counter_vector([np.ones((64, 64), np.float32)], "fluo") is None


def test_fit_takes_the_real_eosin_and_keeps_the_stain_amounts():
    base = _base()
    truth = _mauve(_scaled(base, stain=1.3))
    images = [image for image, _ in simulate(truth, 6, 192, seed=7)]
    fit = match_statistics(images, base, stains="measured")
    vector = fit.config.staining.counter_vector
    assert vector[0] == pytest.approx(MAUVE[0], abs=0.06)
    assert fit.config.staining.main_vector is None  # hematoxylin stays the simulator's
    assert fit.base == replace(base, pixel_size_um=PX)  # the base is reported as given
    # with the eosin known, mauve stroma is not read as hematoxylin: the cells' and the
    # background's stain are recovered as drawn
    assert fit.config.cells[0].stain[1] == pytest.approx(truth.cells[0].stain[1], rel=0.15)
    assert fit.config.background.stain[1] == pytest.approx(truth.background.stain[1], rel=0.3)
    assert "eosin vector" in format_fit(fit)
    # by default the preset's vectors are drawn with, and the stroma read as hematoxylin
    plain = match_statistics(images, base)
    assert plain.config.staining == replace(base.staining,
                                            cell_variation=plain.config.staining.cell_variation)
    assert plain.config.background.stain[1] > 2 * truth.background.stain[1]
    with pytest.raises(ConfigError, match="stains must be one of preset, measured, got 'x'"):
        match_statistics(images, base, stains="x")


def test_stain_vectors_are_validated_in_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("staining:\n  counter_vector: [0.2, -1.0, 0.4]\n")
    with pytest.raises(ConfigError, match=r"staining.counter_vector must be 3 absorbances >= 0"):
        simulation_config("he", config_file=path)
    path.write_text("staining:\n  counter_vector: [0.2, 1.0]\n")
    with pytest.raises(ConfigError, match=r"counter_vector: expected 3 values, got 2"):
        simulation_config("he", config_file=path)


def test_cli_and_run_config_offer_the_fit_choices_the_fit_knows():
    """The CLI spells its choices out (importing the simulator would slow every command);
    they must stay the ones fit_simulator accepts."""
    import argparse

    from cellsynth.cli import _build_parser
    from cellsynth.pipeline.config import SimulateOptions
    from cellsynth.simulate.fit import SPREADS, STAINS

    parser = _build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = {a.dest: a for a in sub.choices["fit-simulator"]._actions}
    assert tuple(options["spread"].choices) == SPREADS
    assert tuple(options["stains"].choices) == STAINS
    assert options["spread"].default == SPREADS[0] and options["stains"].default == STAINS[0]
    for stains in STAINS:
        SimulateOptions(fit_stains=stains)
    with pytest.raises(ValueError, match="fit_stains must be one of preset, measured"):
        SimulateOptions(fit_stains="guessed")


def test_he_background_grain_and_texture_are_fitted_where_pixels_resolve_them():
    # at 0.4 um/px the base's 0.8 um grain spans 2 px: fitted; a coarser, stronger stroma
    # texture than the base's is found from the images
    base = preset("he", pixel_size_um=0.4)
    base = replace(base, layers=replace(base.layers, density_contrast=0.0, size_contrast=0.0))
    truth = replace(base, background=replace(base.background, grain_um=1.6, texture=0.7))
    images = [image for image, _ in simulate(truth, 4, 192, seed=5)]
    fit = match_statistics(images, base)
    assert fit.config.background.texture > 1.3 * base.background.texture
    assert fit.config.background.grain_um > 1.2 * base.background.grain_um
    assert "background grain (um) / texture" in format_fit(fit)
    assert fit.fallback is None and "ran away" not in format_fit(fit)  # a well-posed search
    # at 0.8 um/px (the grain 1 px) neither is fitted: the base's are kept
    coarse = match_statistics(_images(), _base())
    assert coarse.config.background.grain_um == _base().background.grain_um
    assert coarse.config.background.texture == _base().background.texture


def test_a_knob_searched_to_its_limit_is_named_in_the_printout():
    # a fit whose grain ended at its lower bound (statistic 11 % short) and texture at the
    # cap; the blur and size ended inside their ranges: only the two at a limit are named
    from cellsynth.simulate.fit import SimulatorFit, _apply, at_limits

    base = preset("he", pixel_size_um=0.25)
    params = {"size": 1.0, "density": 1.3, "cell_stain": 1.0, "background": 1.0,
              "counterstain": 1.0, "noise": 1.0, "elongation": 1.0, "grain": 0.2,
              "texture": 4.0, "blur": 0.3, "cell_variation": 0.15}
    last = params | {"log_error_grain": math.log(0.619 / 0.549), "log_error_texture": 0.01,
                     "log_error_blur": 0.02, "log_error_size": -0.01}
    fit = SimulatorFit(config=_apply(base, params), base=base, real={}, base_sim={},
                       fitted_sim={}, history=[last])
    assert [(k, side) for k, side, _ in at_limits(fit)] == [("grain", "lower"),
                                                            ("texture", "upper")]
    text = format_fit(fit)
    assert "background grain at its lower limit (background sharpness -11 %" in text
    assert "background texture at its upper limit" in text
    assert "blur at" not in text and "cell size at" not in text
    # inside the limits: no line at all
    inside = SimulatorFit(config=_apply(base, params | {"grain": 0.5, "texture": 1.5}),
                          base=base, real={}, base_sim={}, fitted_sim={},
                          history=[last | {"grain": 0.5, "texture": 1.5}])
    assert at_limits(inside) == [] and "searched to a limit" not in format_fit(inside)
    # a search that fell back to a round on many images blames no image count
    many = replace(inside, real={"n_images": 46}, fallback=3)
    assert "round 3 is the answer" in format_fit(many)
    assert "too few" not in format_fit(many)


def test_a_search_that_runs_away_answers_with_its_best_round():
    # three 128 px fluorescence images of cells 1.4x the preset's: the found regions barely
    # grow with the simulated cells and look longer than they are, so the search drove size
    # and elongation to their limits (the mean of its last rounds: cells 2.5x the base's)
    from cellsynth.simulate.fit import _ROUNDS, _cost

    base = preset("fluo")
    bigger = simulation_config("fluo", overrides={"cells": {
        c.name: {"diameter_um": [d * 1.4 for d in c.diameter_um]} for c in base.cells}})
    fit = match_statistics([image for image, _ in simulate(bigger, 3, 128, seed=5)], base)
    searched = [_cost(h, ("noise",)) for h in fit.history[:_ROUNDS + 1]]
    assert fit.fallback == int(np.argmin(searched))
    assert _cost(fit.history[-2], ("noise",)) > 2 * min(searched)  # the mean, rejected
    # the answer is that round's, not the run-away cells of 2.5x the base's
    assert fit.history[-1]["size"] == fit.history[fit.fallback]["size"]
    assert median_diameter_um(fit.config) / median_diameter_um(base) < 1.6
    assert "the search ran away" in format_fit(fit)
    assert "too few or too small images?" in format_fit(fit)  # 3 images: the likely cause


def test_a_search_whose_cells_run_away_from_the_real_ones_answers_with_the_base():
    # one 128 px image of 8 perfect discs (audit 6): elongation 50x below the base's is out of
    # every round's reach and dominates the total, so the mean of the last rounds was only
    # 1.6x worse in total while its cells were 12x too many and a third too small (cell
    # stain 14x the base's): the cells judged alone send it back to the base preset
    from skimage.draw import disk

    from cellsynth.simulate.fit import _ROUNDS, _cells_diverged, _cost, _ran_away

    def discs(side=128, n=8, r=8):
        image = np.zeros((side, side))
        for _ in range(n):
            cy, cx = rng.integers(r + 2, side - r - 2), rng.integers(r + 2, side - r - 2)
            image[disk((cy, cx), r, shape=image.shape)] = 1
        return np.clip(image * 0.8 + 0.05 + rng.normal(0, 0.02, image.shape), 0, 1)

    rng = np.random.default_rng(0)
    for i in range(26):  # the audit's image is its 27th draw (the total masks it there)
        discs(*((20, 1, 4) if i in (22, 23) else ()))
    image = (discs() * 255).astype(np.uint8)
    base = preset("fluo")
    fit = match_statistics([image], base, pixel_size_um=0.5)
    searched = fit.history[:_ROUNDS + 1]
    answer = fit.history[_ROUNDS + 1]  # the mean of the last rounds, judged and rejected
    assert _cost(answer, ("noise",)) < 2 * min(_cost(h, ("noise",)) for h in searched)
    assert _cells_diverged(answer, searched[0]) and _ran_away(answer, searched, ("noise",))
    assert fit.fallback == 0 and fit.config == replace(
        fit.config, cells=base.cells, background=fit.config.background)
    assert [c.stain for c in fit.config.cells] == [c.stain for c in base.cells]
    assert "round 0 (the base preset) is the answer" in format_fit(fit)
    # a round whose cells match as well as the base's is no run-away by this test
    assert not _cells_diverged(searched[0], searched[0])


def test_estimator_tells_a_domed_cell_from_an_even_one_and_quiet_noise_levels_apart():
    from cellsynth.simulate.estimate import _domes, _halos, _noise, _noise_level, _region_excess

    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32) / 12.0
    regions = (r <= 1).astype(np.int32)
    even = np.where(r <= 1, 0.5, 0.1)
    dome = np.where(r <= 1, 0.1 + 0.6 * np.sqrt(np.clip(1 - r * r, 0, 1)), 0.1)
    def ratio(measure, image, *extra):
        excess = image - 0.1  # the background's stain
        return measure(excess, regions, 1, _region_excess(excess, regions, 1), *extra)[0]

    assert ratio(_domes, even) == pytest.approx(1.0, abs=0.01)
    assert ratio(_domes, dome) > 1.2
    # glow 1-3 um outside the region: none for a sharp disk, a tenth for a hazy one
    hazy = 0.1 + 0.4 * ((1 - 0.3) * (r <= 1) + 0.3 * ndi.gaussian_filter((r <= 1) * 1.0, 6))
    assert ratio(_halos, even, 0.5) == pytest.approx(0.0, abs=1e-6)
    assert ratio(_halos, hazy, 0.5) > 0.05
    # 8-bit images with noise of 0.4 and 0.5 grey levels: the median residual sits on the
    # same grey level, the trimmed mean tells them apart (and keeps rising)
    rng = np.random.default_rng(0)
    images = [np.rint(20 + s * rng.standard_normal((128, 128))) / 255
              for s in (0.4, 0.5, 0.8, 1.2)]
    assert _noise(images[0]) == _noise(images[1])
    levels = [_noise_level(a) for a in images]
    assert levels[1] > 1.2 * levels[0] and np.all(np.diff(levels) > 0)


def test_fluo_fit_draws_the_dome_and_the_spread_between_images_it_sees():
    # ten fluorescence images (enough to tell a spread between images) of domed nuclei from
    # cameras and foci that differ per image, against even nuclei from one camera
    base = replace(preset("fluo", pixel_size_um=PX), variation=Variation(brightness=(0.3, 0.6)))
    varied = replace(base, cells=tuple(replace(c, dome=0.8) for c in base.cells),
                     variation=replace(base.variation, noise=(0.3, 3.3), blur=(0.5, 2.0)))
    fits = {name: match_statistics([im for im, _ in simulate(c, 10, 160, seed=3)], base,
                                   spread="fitted")
            for name, c in (("same", base), ("varied", varied))}
    domes = {name: max(c.dome for c in f.config.cells) for name, f in fits.items()}
    assert domes["same"] < 0.2 < 0.4 < domes["varied"]  # drawn 0.8: 0.70 from 12 simulated
    # images, 0.47 from 48 (the middle / mean stain matched within 0.02 either way)
    halos = {name: f.config.optics.halo for name, f in fits.items()}
    assert max(halos.values()) < 0.1  # no haze drawn, none fitted (dome and spreads aside)
    noise = {n: f.config.variation.noise[1] / f.config.variation.noise[0]
             for n, f in fits.items()}
    assert noise["varied"] > 3.0 and noise["varied"] > 2 * noise["same"]
    assert fits["varied"].config.variation.blur[1] > fits["same"].config.variation.blur[1]
    text = format_fit(fits["varied"])
    assert "cell dome" in text and "noise / blur factor per image" in text


def test_dome_halo_and_spreads_are_fitted_on_fluo_only_and_under_the_floor_too():
    # he (and nissl, merker) keep their even cells, sharp PSF and single camera: their fits
    # and detectors were measured without (fit._VARIED); on fluo the default fit for
    # training (spread floor) draws them as well, with the camera noise kept at the floor
    base = _base()
    he = match_statistics([im for im, _ in simulate(base, 8, 160, seed=3)], base,
                          spread="fitted")
    assert all(c.dome == 0.0 for c in he.config.cells) and he.config.optics.halo == 0.0
    assert he.config.variation == base.variation
    assert "cell dome" not in format_fit(he)
    fluo = replace(preset("fluo", pixel_size_um=PX), variation=Variation(brightness=(0.3, 0.6)))
    domed = replace(fluo, cells=tuple(replace(c, dome=0.8) for c in fluo.cells),
                    optics=replace(fluo.optics, halo=0.4, halo_um=3.0),
                    variation=replace(fluo.variation, noise=(0.3, 3.3)))
    floor = match_statistics([im for im, _ in simulate(domed, 10, 160, seed=3)], fluo)
    assert min(c.dome for c in floor.config.cells if c.labeled) > 0.4
    assert 0.25 < floor.config.optics.halo < 0.6
    assert "out-of-focus halo" in format_fit(floor)
    noise = floor.config.variation.noise
    assert noise[1] / noise[0] > 3.0
    assert floor.config.optics.shot_noise >= fluo.optics.shot_noise


def test_one_image_saved_as_uint8_and_as_uint16_measures_the_same(tmp_path):
    """The estimator divided uint8 by 255 but stretched every other dtype by percentiles:
    the same pixels saved as uint16 (as a microscope exporter writes 8-bit data) fitted cell
    stains of 2.1-3.0 instead of 1.05-1.5 and nearly twice the noise. Integer images are now
    read by the bit depth their values need; 12-bit data (values x 16) lands within 0.5 %."""
    import tifffile

    from cellsynth.simulate import fit

    tiles = [image for image, _ in simulate(_base(), 3, 192, seed=7)]
    base = replace(_base(), pixel_size_um=PX)
    stats = {}
    for name, scale, dtype in (("u8", 1, np.uint8), ("u16", 1, np.uint16),
                               ("u12", 16, np.uint16)):
        folder = tmp_path / name
        folder.mkdir()
        for i, tile in enumerate(tiles):
            tifffile.imwrite(folder / f"{i}.tif", tile.astype(dtype) * dtype(scale),
                             photometric="rgb")
        stats[name], _ = fit._real_statistics(fit._load(folder, _base(), PX), base)
    for key in ("cell_stain", "background_stain", "noise", "density", "diameter_um"):
        assert stats["u16"][key] == pytest.approx(stats["u8"][key], rel=1e-6), key
        assert stats["u12"][key] == pytest.approx(stats["u8"][key], rel=0.05), key


def test_a_folder_stating_no_pixel_size_is_said_to_be_at_the_presets(tmp_path):
    """fit-simulator took the preset's pixel size for images stating none without a word,
    where fit-refiner, inspect and predict say so (fresh-user audit)."""
    import warnings

    from cellsynth.io.images import write_image

    folder = tmp_path / "plain"
    folder.mkdir()
    for i, (image, _) in enumerate(simulate(_base(), 2, 128, seed=3)):
        write_image(folder / f"{i}.png", image)
    with pytest.warns(UserWarning, match=r"plain: pixel size unknown .*taken to be the "
                                         rf"preset's {PX:g} um/px"):
        write_fit(folder, _base(), tmp_path / "a.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        write_fit(folder, _base(), tmp_path / "b.yaml", pixel_size_um=PX)  # (given)


def test_images_of_another_stain_are_said_before_the_fit_runs(tmp_path):
    """RGB H&E fitted with --preset fluo ran 181 s and wrote a config without a word."""
    import warnings

    folder = tmp_path / "he"
    folder.mkdir()
    for i, (image, _) in enumerate(simulate(_base(), 2, 128, seed=3)):
        write_image(folder / f"{i}.png", image)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # (stops the fit at the warning)
        with pytest.raises(UserWarning, match=r"he: 2 of 2 look RGB with a pink .* but "
                                              r"preset 'fluo' simulates bright nuclei .*"
                                              r"preset 'he' fits them"):
            fit_simulator(folder, "fluo", pixel_size_um=PX)


def test_a_whole_section_saved_as_uint16_measures_as_its_uint8_copy(tmp_path, monkeypatch):
    """Windows of a uint16 section were stretched by the section's percentile range, where a
    small image is read by its bit depth (the same pixels then fitted other stains and
    noise); all windows of a section share one scale, now its bit depth's."""
    import tifffile

    from cellsynth.simulate import fit, fit_images

    tiles = [image for image, _ in simulate(_base(), 4, 192, seed=5)]
    section = np.concatenate([np.concatenate(tiles[i:i + 2], axis=1) for i in (0, 2)])
    monkeypatch.setattr(fit_images, "_WINDOW_ABOVE", 256 * 256)  # 384² is a section here
    monkeypatch.setattr(fit_images, "_WINDOW", 192)
    base = replace(_base(), pixel_size_um=PX)
    stats = {}
    for name, scale, dtype in (("u8", 1, np.uint8), ("u16", 1, np.uint16),
                               ("u12", 16, np.uint16)):
        (tmp_path / name).mkdir()
        tifffile.imwrite(tmp_path / name / "slide.tif", section.astype(dtype) * dtype(scale),
                         photometric="rgb", tile=(128, 128))
        real = fit._load(tmp_path / name, _base(), PX)
        assert len(real.images) > 1 and all(i.shape[0] == 192 for i in real.images)
        stats[name], _ = fit._real_statistics(real, base)
    for key in ("cell_stain", "background_stain", "noise", "density", "diameter_um"):
        assert stats["u16"][key] == pytest.approx(stats["u8"][key], rel=1e-6), key
        assert stats["u12"][key] == pytest.approx(stats["u8"][key], rel=0.05), key


def test_a_folder_mixing_gray_and_rgb_images_is_one_line(tmp_path, capsys):
    """Two gray PNGs and one RGB PNG: the estimator stacked them and failed with a traceback
    ('inhomogeneous shape'); each kind is named by one of its files."""
    real = tmp_path / "mixed"
    real.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_image(real / f"{name}.png", rng.integers(0, 255, (96, 96), dtype=np.uint8))
    write_image(real / "c.png", rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    argv = ["fit-simulator", "--real", str(real), "--preset", "fluo", "--out",
            str(tmp_path / "fit.yaml"), "--pixel-size", "0.5"]
    err = _one_line_error(capsys, argv, "images of different kinds (")
    assert "a.png has 1 channel, " in err and "c.png has 3 channels)" in err
    assert not (tmp_path / "fit.yaml").exists()


def test_a_constant_image_is_named_in_the_warning(tmp_path, capsys):
    """fit-simulator said "image: image is constant (0)" without the file (audit 6)."""
    from cellsynth.io.images import write_image

    (tmp_path / "blank").mkdir()
    write_image(tmp_path / "blank" / "glass.png", np.zeros((128, 128), np.uint8))
    write_image(tmp_path / "blank" / "slide.png", np.full((128, 128), 200, np.uint8))
    main(["fit-simulator", "--real", str(tmp_path / "blank"), "--preset", "fluo", "--out",
          str(tmp_path / "f.yaml"), "--pixel-size", "0.5", "--quiet"])
    err = capsys.readouterr().err
    assert "glass.png: image is constant (0)" in err and "slide.png: image is constant" in err
    assert "image: image is constant" not in err
