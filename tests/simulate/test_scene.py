"""The simulator's promises: exact labels, one connected region per label, determinism,
statistics inside the configured ranges."""

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import label as connected_components
from skimage.segmentation import find_boundaries

from cellsynth.simulate import PRESETS, preset, render_scene, simulate
from cellsynth.simulate.presets import Background, Optics, Staining, Variation, Vessels
from cellsynth.simulate.scene import CLASSES


def _one_region_per_label(labels: np.ndarray) -> bool:
    n_labels = len(np.unique(labels)) - 1
    _, n_regions = connected_components(labels, background=0, connectivity=1, return_num=True)
    return n_regions == n_labels


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_labels_consecutive_and_connected(name):
    for image, labels in simulate(name, 3, 128, seed=1):
        assert labels.dtype == np.uint16 and image.dtype == np.uint8
        assert image.shape[:2] == labels.shape == (128, 128)
        ids = np.unique(labels)
        assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, ids.size))
        assert _one_region_per_label(labels)


def test_labels_are_exactly_the_drawn_cells():
    # No background stain, texture, blur, noise or unlabeled cells: every pixel that differs
    # from the white background must be labeled, and every labeled pixel must be darker.
    base = preset("merker")
    cells = tuple(replace(c, texture=0.0) for c in base.cells if c.labeled)
    config = replace(
        base, cells=cells,
        background=Background(stain=(0.0, 0.0), texture=0.0, halo=0.0, fibres=0.0),
        vessels=Vessels(density=0.0), staining=Staining(unevenness=0.0, cell_variation=0.0),
        optics=Optics(blur_um=0.0, shot_noise=0.0, read_noise=0.0),
    )
    for seed in range(3):
        image, labels = render_scene(config, (160, 160), np.random.default_rng(seed))
        white = image.max()
        assert labels.max() > 20
        np.testing.assert_array_equal(image < white, labels > 0)


@pytest.mark.parametrize("name", PRESETS)
def test_class_map_takes_no_randomness_and_its_cells_are_the_labels(name):
    config = preset(name)
    image, labels = render_scene(config, (128, 128), np.random.default_rng(4))
    image2, labels2, classes = render_scene(config, (128, 128), np.random.default_rng(4),
                                            classes=True)
    np.testing.assert_array_equal(image, image2)
    np.testing.assert_array_equal(labels, labels2)
    assert classes.dtype == np.uint8 and set(np.unique(classes)) <= set(CLASSES)
    np.testing.assert_array_equal(classes == 1, labels > 0)


def _gray(image: np.ndarray) -> np.ndarray:
    return image.mean(-1) if image.ndim == 3 else image.astype(float)


def test_class_map_marks_blobs_vessels_and_fibres_where_they_were_drawn():
    """One structure at a time on a light, flat, noiseless background: in brightfield, blobs
    and fibres are darker than what is called background, vessel lumina (no stain) lighter."""
    base = preset("merker")
    flat = dict(staining=Staining(unevenness=0.0, cell_variation=0.0),
                optics=Optics(blur_um=0.0, shot_noise=0.0, read_noise=0.0))
    light = Background(stain=(0.15, 0.15), texture=0.0, halo=0.0, fibres=0.0)
    none = tuple(replace(c, density=0.0) for c in base.cells if c.labeled)
    blobs = replace(base, cells=none + tuple(c for c in base.cells if not c.labeled),
                    background=light, vessels=Vessels(density=0.0), **flat)
    vessels = replace(base, cells=none, background=light, **flat)
    fibres = replace(base, cells=none, vessels=Vessels(density=0.0), **flat,
                     background=replace(light, fibres=40.0, fibre_stain=0.5))
    for config, kind, sign in ((blobs, 2, -1), (vessels, 3, +1), (fibres, 4, -1)):
        image, labels, classes = render_scene(config, (256, 256), np.random.default_rng(1),
                                              classes=True)
        gray = _gray(image)
        # vessels come with their (labelled) endothelial cells
        assert set(np.unique(classes)) - {1} == {0, kind}, kind
        assert sign * (gray[classes == kind].mean() - gray[classes == 0].mean()) > 10, kind


def test_unannotated_cells_are_drawn_but_left_out_of_the_labels():
    """A type with ``annotated: False`` draws the same image (same random numbers) and
    takes its cells, and only those, out of the labels; the class map calls them
    unlabelled cells."""
    base = preset("nissl")
    pale = next(c for c in base.cells if c.name == "round_neuron")
    hidden = replace(base, cells=base.cells + (replace(pale, name="pale", annotated=False),))
    shown = replace(base, cells=base.cells + (replace(pale, name="pale"),))
    for seed in range(2):
        img_h, lab_h, cls_h = render_scene(hidden, (192, 192), np.random.default_rng(seed),
                                           classes=True)
        img_s, lab_s, cls_s = render_scene(shown, (192, 192), np.random.default_rng(seed),
                                           classes=True)
        np.testing.assert_array_equal(img_h, img_s)
        # every annotated cell is still there, pixel for pixel, in the same order
        kept = np.unique(lab_s[lab_h > 0])
        assert kept.size == lab_h.max()
        np.testing.assert_array_equal(lab_h > 0, np.isin(lab_s, kept))
        np.testing.assert_array_equal(lab_h[lab_h > 0],
                                      np.searchsorted(kept, lab_s[lab_h > 0]) + 1)
        gone = (lab_s > 0) & (lab_h == 0)
        assert gone.sum() > 500  # the pale cells drawn
        assert np.all(cls_h[gone] == 2) and np.all(cls_s[gone] == 1)
        np.testing.assert_array_equal(cls_h == 1, lab_h > 0)
        assert _one_region_per_label(lab_h)


def test_unannotated_endothelial_nuclei_are_drawn_but_left_out_of_the_labels():
    """``vessels.endothelial_annotated: false`` draws the same image and takes the wall
    nuclei, elongated and lying beside the lumen, out of the labels."""
    base = preset("nissl")
    dense = replace(base.vessels, density=3.0, endothelial_per_100um=12.0)
    shown = replace(base, vessels=dense)
    hidden = replace(base, vessels=replace(dense, endothelial_annotated=False))
    img_s, lab_s, cls_s = render_scene(shown, (256, 256), np.random.default_rng(0),
                                       classes=True)
    img_h, lab_h, cls_h = render_scene(hidden, (256, 256), np.random.default_rng(0),
                                       classes=True)
    np.testing.assert_array_equal(img_h, img_s)
    assert lab_h.max() < lab_s.max()
    gone = np.setdiff1d(np.unique(lab_s[(lab_s > 0) & (lab_h == 0)]),
                        np.unique(lab_s[lab_h > 0]))
    assert gone.size >= 3
    lumen = ndi.binary_dilation(cls_s == 3, iterations=4)
    for cell in gone:  # each one a wall nucleus: elongated, touching a lumen
        mask = lab_s == cell
        assert (mask & lumen).any()
        ys, xs = np.nonzero(mask)
        spread = np.sort(np.linalg.eigvalsh(np.cov(np.stack([ys, xs]))))
        assert spread[1] > 2.0 * spread[0], cell
        assert np.all(cls_h[mask & (lab_h == 0)] == 2)


def test_a_simulation_needs_an_annotated_type():
    base = preset("nissl")
    with pytest.raises(ValueError, match="annotated"):
        replace(base, cells=tuple(replace(c, annotated=False) for c in base.cells))


def _visible_fractions(config, seed: int) -> np.ndarray:
    """Per kept cell: the part of its (in-image) area the label map still shows."""
    from cellsynth.simulate import layout

    rng = np.random.default_rng(seed)
    shape = (256, 256)
    drawn_cells = layout.candidates(config, rng, shape, *layout.vessels(config, rng, shape))[0]
    labels, kept, _ = layout.place(drawn_cells, shape, config.max_occlusion)
    visible = np.bincount(labels.ravel(), minlength=len(kept) + 1)[1:]
    drawn = []
    for cell in kept:
        _, patch = layout.patch_slices(cell, *shape)
        drawn.append(cell.shape.mask[patch].sum())
    return visible / np.array(drawn)


@pytest.mark.parametrize("max_occlusion", [0.05, 0.2, 0.5])
def test_occlusion_never_hides_more_than_allowed(max_occlusion):
    config = replace(preset("nissl"), max_occlusion=max_occlusion)
    fractions = np.concatenate([_visible_fractions(config, seed) for seed in range(3)])
    assert len(fractions) > 50
    assert fractions.min() >= 1 - max_occlusion - 1e-9
    # the limit binds: some cells are occluded close to it (so it is what keeps them whole)
    assert fractions.min() <= 1 - 0.5 * max_occlusion
    _, labels = render_scene(config, (256, 256), np.random.default_rng(0))
    assert _one_region_per_label(labels)


def test_same_seed_same_images_other_seed_other_images():
    a = list(simulate("nissl", 2, 64, seed=5))
    b = list(simulate("nissl", 2, 64, seed=5))
    c = list(simulate("nissl", 2, 64, seed=6))
    for (ia, la), (ib, lb) in zip(a, b):
        assert np.array_equal(ia, ib) and np.array_equal(la, lb)
    assert not np.array_equal(a[0][0], c[0][0])


def test_image_i_does_not_depend_on_n():
    few = list(simulate("fluo", 2, 64, seed=3))
    many = list(simulate("fluo", 4, 64, seed=3))
    assert np.array_equal(few[1][0], many[1][0])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_statistics_inside_configured_ranges(name):
    config = replace(preset(name), variation=Variation())  # per-image draws: tested below
    px = config.pixel_size_um
    size = 256
    labeled = [c for c in config.cells if c.labeled]
    d_min = min(c.diameter_um[0] for c in labeled) * (1 - config.layers.size_contrast)
    d_max = max(c.diameter_um[1] for c in labeled) * (1 + config.layers.size_contrast)
    expected = sum(c.density for c in labeled) * (size * px) ** 2 / 1e4
    counts, diameters = [], []
    for _, labels in simulate(config, 6, size, seed=0):
        counts.append(int(labels.max()))
        inner = labels[1:-1, 1:-1]
        border = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        areas = np.bincount(labels.ravel())
        ids = np.setdiff1d(np.unique(inner), np.r_[0, border])
        diameters += list(2 * np.sqrt(areas[ids] / np.pi) * px)
    # Counts: occlusion rejects some cells, cut cells at the border add some.
    assert 0.5 * expected < np.mean(counts) < 1.6 * expected, (counts, expected)
    diameters = np.array(diameters)
    # Visible areas shrink by occlusion; pyramidal apices add a little.
    assert np.median(diameters) > d_min and np.median(diameters) < d_max
    assert diameters.max() < 1.5 * d_max
    assert np.mean(diameters > 0.5 * d_min) > 0.95


def test_pixel_size_scales_cells():
    coarse = replace(preset("merker"), pixel_size_um=1.0)
    fine = replace(preset("merker"), pixel_size_um=0.5)

    def median_area(config):
        areas = []
        for _, labels in simulate(config, 3, 192, seed=2):
            areas += list(np.bincount(labels.ravel())[1:])
        return np.median(areas)

    ratio = median_area(fine) / median_area(coarse)
    assert 2.5 < ratio < 6.0  # ideally 4 (areas scale with the square)


def test_colour_variants():
    gray, _ = next(simulate(preset("merker"), 1, 64, seed=0))
    violet, _ = next(simulate(preset("merker", color="violet"), 1, 64, seed=0))
    assert gray.ndim == 2 and violet.shape == (64, 64, 3)
    # Violet: the blue channel absorbs least, so it is the brightest on average.
    assert violet[..., 2].mean() > violet[..., 1].mean()
    he, labels = next(simulate("he", 1, 128, seed=0))
    fluo, flabels = next(simulate(replace(preset("fluo"), variation=Variation()), 1, 128,
                                  seed=0))
    # Brightfield nuclei are darker than the rest, fluorescence nuclei brighter.
    assert he[labels > 0].mean() < he[labels == 0].mean()
    assert fluo[flabels > 0].mean() > 2 * fluo[flabels == 0].mean()


def test_fixed_zoom_is_a_finer_pixel_size_with_the_same_psf_in_pixels():
    base = replace(preset("fluo"), variation=Variation())
    zoomed = replace(base, variation=Variation(zoom=(2.0, 2.0)))
    finer = replace(base, pixel_size_um=base.pixel_size_um / 2,
                    optics=replace(base.optics, blur_um=base.optics.blur_um / 2))
    a = render_scene(zoomed, (96, 96), np.random.default_rng(4))
    b = render_scene(finer, (96, 96), np.random.default_rng(4))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def _per_image_stats(config, n=12):
    medians, counts, brightness = [], [], []
    for image, labels in simulate(config, n, 192, seed=7):
        counts.append(labels.max())
        if labels.max():
            medians.append(np.median(np.bincount(labels.ravel())[1:]))
            brightness.append(image[labels > 0].mean())
    return (np.asarray(v, float) for v in (medians, counts, brightness))


def test_variation_spreads_size_density_and_brightness_between_images():
    off = replace(preset("fluo"), variation=Variation())
    # Exponent 2: cells per pixel do not depend on the zoom, only on the density factor.
    on = replace(off, variation=Variation(zoom=(0.5, 2.0), density=(0.25, 4.0),
                                          brightness=(0.2, 1.0), zoom_density_exponent=2.0))
    m_off, c_off, b_off = _per_image_stats(off)
    m_on, c_on, b_on = _per_image_stats(on)

    def spread(v):
        return np.percentile(v, 90) / np.percentile(v, 10)

    assert len(m_on) >= 10  # few empty images
    assert spread(m_on) > 2 * spread(m_off)  # zoom 0.5-2 spans 16x in area
    assert spread(m_on) > 3
    assert spread(b_on) > 1.5 * spread(b_off)
    assert spread(c_on + 1) > 2 * spread(c_off + 1)


def test_variation_rejects_bad_ranges():
    with pytest.raises(ValueError, match="variation.zoom"):
        Variation(zoom=(0.0, 1.0))
    with pytest.raises(ValueError, match="variation.brightness"):
        Variation(brightness=(2.0, 1.0))
    with pytest.raises(ValueError, match="variation.noise"):
        Variation(noise=(0.0, 2.0))
    with pytest.raises(ValueError, match="variation.blur"):
        Variation(blur=(1.5, 0.5))


def _noise_and_sharpness(config, n=10):
    """Per image: the std of the finest detail (camera noise) over the flat background, and
    the 1-2 px over the 2-4 px detail (sharpness) of the whole image."""
    noise, sharp = [], []
    for image, labels in simulate(config, n, 128, seed=3):
        a = image.astype(float)
        g1, g2, g4 = (ndi.gaussian_filter(a, s) for s in (1.0, 2.0, 4.0))
        far = ~ndi.binary_dilation(labels > 0, iterations=6)
        noise.append(np.std((a - g1)[far]))
        sharp.append(np.std(g1 - g2) / np.std(g2 - g4))
    return np.array(noise), np.array(sharp)


def test_variation_draws_a_camera_and_a_focus_per_image_and_nothing_without_it():
    off = replace(preset("fluo"), variation=Variation(brightness=(0.5, 0.5)))
    # ranges of (1, 1) draw nothing: the images of a config without them are unchanged
    same = replace(off, variation=replace(off.variation, noise=(1.0, 1.0), blur=(1.0, 1.0)))
    for (a, la), (b, lb) in zip(simulate(off, 3, 96, seed=2), simulate(same, 3, 96, seed=2)):
        assert np.array_equal(a, b) and np.array_equal(la, lb)
    noisy = replace(off, optics=replace(off.optics, shot_noise=0.04, read_noise=0.02))
    n_off, s_off = _noise_and_sharpness(noisy)
    n_on, _ = _noise_and_sharpness(replace(noisy, variation=replace(
        noisy.variation, noise=(0.25, 4.0))))
    _, s_on = _noise_and_sharpness(replace(off, variation=replace(
        off.variation, blur=(0.3, 3.0))))
    assert np.ptp(np.log(n_on)) > 3 * np.ptp(np.log(n_off)) and np.ptp(np.log(n_on)) > 1.0
    assert np.ptp(np.log(s_on)) > 3 * np.ptp(np.log(s_off))


def test_dome_makes_cells_brighter_in_the_middle_and_keeps_their_mean():
    flat = replace(preset("fluo"), variation=Variation(),
                   staining=replace(preset("fluo").staining, unevenness=0.0,
                                    cell_variation=0.0),
                   optics=Optics(blur_um=0.0, shot_noise=0.0, read_noise=0.0))
    flat = replace(flat, cells=tuple(replace(c, texture=0.0, nucleolus_prob=0.0)
                                     for c in flat.cells))
    domed = replace(flat, cells=tuple(replace(c, dome=1.0) for c in flat.cells))
    ratios, means, cells = {}, {}, {}
    for name, config in (("flat", flat), ("domed", domed)):
        image, labels = render_scene(config, (192, 192), np.random.default_rng(5))
        labels = labels.astype(np.int64)
        depth = ndi.distance_transform_edt((labels > 0) & ~find_boundaries(labels, mode="inner"))
        deepest = np.r_[0.0, ndi.maximum(depth, labels, np.arange(1, labels.max() + 1))][labels]
        middle = (labels > 0) & (depth > 0.6 * deepest)
        rim = (labels > 0) & (depth <= 0.25 * deepest)
        ratios[name] = image[middle].mean() / image[rim].mean()
        means[name], cells[name] = image[labels > 0].mean(), labels
    assert np.array_equal(cells["flat"], cells["domed"])  # the same cells, painted otherwise
    assert ratios["flat"] < 1.15 < 1.6 < ratios["domed"]
    assert means["domed"] == pytest.approx(means["flat"], rel=0.15)
    with pytest.raises(ValueError, match="dome"):
        replace(flat.cells[0], dome=1.5)


def test_halo_spreads_part_of_the_light_past_the_cells_and_keeps_it():
    # a widefield microscope's out-of-focus haze: light 2-4 um outside the cells, where a
    # Gaussian PSF of 0.4 um leaves none; the total light stays, the labels do not change
    sharp = replace(preset("fluo"), variation=Variation(),
                    staining=replace(preset("fluo").staining, unevenness=0.0),
                    background=replace(preset("fluo").background, stain=(0.0, 0.0),
                                       fibre_stain=0.0),
                    optics=Optics(blur_um=0.4, shot_noise=0.0, read_noise=0.0))
    hazy = replace(sharp, optics=replace(sharp.optics, halo=0.4, halo_um=3.0))
    glow, total, cells = {}, {}, {}
    for name, config in (("sharp", sharp), ("hazy", hazy)):
        image, labels = render_scene(config, (192, 192), np.random.default_rng(4))
        distance = ndi.distance_transform_edt(labels == 0) * config.pixel_size_um
        ring = (distance >= 2.0) & (distance <= 4.0)
        glow[name] = image[ring].astype(float).mean() / image[labels > 0].astype(float).mean()
        total[name], cells[name] = image.astype(float).sum(), labels
    assert np.array_equal(cells["sharp"], cells["hazy"])
    assert glow["sharp"] < 0.02 < 0.05 < glow["hazy"]
    assert total["hazy"] == pytest.approx(total["sharp"], rel=0.05)
    for bad in ({"halo": 1.0}, {"halo": -0.1}, {"halo_um": 0.0}):
        with pytest.raises(ValueError, match="halo"):
            replace(sharp.optics, **bad)


# --- unlabelled cell bodies and clearings (H&E) -------------------------------------------

def _disk_labels(size: int = 64, radius: float = 6.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (np.hypot(yy - size / 2, xx - size / 2) <= radius).astype(np.int32)


_NONE = dict(bodies=0.0, free_bodies=0.0, membrane=0.0, clearing=0.0, vacuoles=0.0)


def _he_with(**background):
    """The he preset with only the given bodies / clearings (the preset draws them all)."""
    config = preset("he", pixel_size_um=0.25)
    return replace(config, background=replace(config.background, **{**_NONE, **background}))


def test_bodies_add_counterstain_around_the_nucleus_up_to_their_reach():
    from cellsynth.simulate.scene import _bodies_and_clearings

    labels = _disk_labels()  # a nucleus of radius 6 px at (32, 32)
    config = _he_with(bodies=1.0, body_um=(1.0, 1.0), body_stain=(0.3, 0.3), texture=0.0)
    main = np.zeros(labels.shape, np.float32)
    counter = np.zeros(labels.shape, np.float32)
    _bodies_and_clearings(config, np.random.default_rng(0), labels, main, counter)
    # Reach 1 um = 4 px beyond the nucleus, outline wobbling by up to ~30 % of that.
    assert counter[32, 32 + 6 + 2] == pytest.approx(0.3, abs=0.02)
    assert counter[32, 32 + 6 + 9] == 0.0 and counter[0, 0] == 0.0
    assert not main.any()  # no membrane asked for


def test_membrane_outlines_a_body_outside_the_nucleus_only():
    from cellsynth.simulate.scene import _bodies_and_clearings

    labels = _disk_labels()
    config = _he_with(bodies=1.0, body_um=(2.0, 2.0), membrane=0.2)
    main = np.zeros(labels.shape, np.float32)
    _bodies_and_clearings(config, np.random.default_rng(0), labels, main,
                          np.zeros(labels.shape, np.float32))
    assert main.max() == pytest.approx(0.2, abs=0.01)
    assert not main[labels > 0].any()
    assert main[32, 32 + 6 + 1] < 0.05  # just outside the nucleus: cytoplasm, not membrane


def test_clear_rims_wash_out_both_stains_next_to_nuclei_but_never_on_them():
    from cellsynth.simulate.scene import _bodies_and_clearings

    labels = _disk_labels()
    config = _he_with(clearing=1.0, clearing_um=(1.0, 1.0))  # rims 4 px wide
    main = np.ones(labels.shape, np.float32)
    counter = np.ones(labels.shape, np.float32)
    _bodies_and_clearings(config, np.random.default_rng(0), labels, main, counter)
    ring = (labels == 0) & (ndi.distance_transform_edt(labels == 0) <= 3)
    assert main[ring].min() == pytest.approx(0.1, abs=0.01)  # torn open somewhere
    assert np.array_equal(main, counter)
    assert np.all(main[labels > 0] == 1.0)
    assert np.all(main[ndi.distance_transform_edt(labels == 0) > 6] == 1.0)


def test_free_bodies_and_vacuoles_draw_no_labels_and_leave_labels_unchanged():
    config = _he_with(free_bodies=20.0, vacuoles=10.0)
    plain = _he_with()
    image, labels = render_scene(config, (128, 128), np.random.default_rng(3))
    image0, labels0 = render_scene(plain, (128, 128), np.random.default_rng(3))
    # The structures are drawn after the labels, from the same stream: labels are the same,
    # the stroma is not.
    assert np.array_equal(labels, labels0)
    assert not np.array_equal(image, image0)
    # Vacuoles are near-white holes in the stroma.
    assert image[labels == 0].max(axis=-1).max() > image0[labels0 == 0].max(axis=-1).max()


def test_only_the_he_preset_draws_bodies_and_clearings():
    for name in ("merker", "nissl", "fluo"):
        bg = preset(name).background
        assert bg.bodies == bg.free_bodies == bg.clearing == bg.vacuoles == bg.membrane == 0
    bg = preset("he").background
    assert bg.bodies > 0 and bg.free_bodies > 0 and bg.clearing > 0 and bg.vacuoles > 0


def test_body_and_clearing_settings_are_validated():
    with pytest.raises(ValueError, match="background.bodies"):
        Background(bodies=1.5)
    with pytest.raises(ValueError, match="background.vacuoles"):
        Background(vacuoles=-1.0)
    with pytest.raises(ValueError, match="background.clearing_um"):
        Background(clearing_um=(2.0, 1.0))


def test_variation_scales_bodies_with_the_other_stains_and_free_bodies_with_density():
    from cellsynth.simulate.scene import _vary

    config = replace(_he_with(bodies=0.5, free_bodies=10.0, membrane=0.1),
                     variation=Variation(brightness=(2.0, 2.0), density=(3.0, 3.0)))
    varied = _vary(config, np.random.default_rng(0)).background
    assert varied.body_stain == pytest.approx(tuple(2 * b for b in config.background.body_stain))
    assert varied.membrane == pytest.approx(0.2)
    assert varied.free_bodies == pytest.approx(30.0)
    assert varied.stain == pytest.approx(tuple(2 * b for b in config.background.stain))


def test_stain_vectors_colour_the_image_and_change_nothing_else():
    config = preset("he", pixel_size_um=0.5)
    mauve = replace(config, staining=replace(config.staining, counter_vector=(0.25, 1.0, 0.4)))
    pink_image, pink_labels = render_scene(config, (96, 96), np.random.default_rng(4))
    mauve_image, mauve_labels = render_scene(mauve, (96, 96), np.random.default_rng(4))
    assert np.array_equal(pink_labels, mauve_labels)
    background = pink_labels == 0
    pink, mauve_ = (im[background].astype(float).mean(axis=0) for im in (pink_image, mauve_image))
    # eosin that absorbs red and blue darkens both there; green (absorbance 1 in both) stays
    assert mauve_[0] < pink[0] - 5 and mauve_[2] < pink[2] - 5
    assert abs(mauve_[1] - pink[1]) < 1.5
    # the default written out is the default
    from cellsynth.simulate.optics import STAIN_VECTORS

    same = replace(config, staining=replace(config.staining,
                                            counter_vector=tuple(STAIN_VECTORS["eosin"])))
    assert np.array_equal(render_scene(same, (96, 96), np.random.default_rng(4))[0], pink_image)


def test_without_a_seam_covered_cells_meet_without_the_pale_line_and_nothing_else_changes():
    # where one cell covers another, its soft edge fades into the covered cell (seam 0)
    # instead of to the neuropil (seam 1, the default): the same labels, darker pixels on the
    # line between two cells, the image unchanged away from such lines
    config = preset("nissl")
    assert config.seam == 1.0
    seamed = render_scene(config, (128, 128), np.random.default_rng(4))
    seamless = render_scene(replace(config, seam=0.0), (128, 128), np.random.default_rng(4))
    labels = seamed[1]
    assert np.array_equal(labels, seamless[1])
    shifted = [(labels[:-1], labels[1:]), (labels[:, :-1], labels[:, 1:])]
    line = np.zeros(labels.shape, bool)
    for (a, b), view in zip(shifted, [(slice(None, -1),), (slice(None), slice(None, -1))]):
        line[view] |= (a != b) & (a > 0) & (b > 0)
    assert line.sum() > 50  # (the preset's packed somata touch)
    gray = [im.astype(float).mean(axis=-1) for im in (seamed[0], seamless[0])]
    darker = gray[0][line] - gray[1][line]  # (8-bit levels; stain darkens)
    # (the line's pixels on the covered side keep their value; blur spreads the rest)
    assert darker.min() > -1 and darker.mean() > 2 and (darker >= 5).mean() > 0.1
    far = ~ndi.binary_dilation(line, iterations=6)
    assert np.array_equal(gray[0][far], gray[1][far])


def test_seam_must_be_a_fraction():
    with pytest.raises(ValueError, match="seam"):
        replace(preset("nissl"), seam=1.5)


def test_kin_stain_gives_a_covering_cell_the_stain_of_the_cell_it_covers():
    # kin_stain 1: a cell over another is painted with that cell's stain, so the pair's
    # interiors match; the labels and every cell that covers none stay as drawn
    config = replace(preset("nissl"), staining=Staining(unevenness=0.0),
                     optics=Optics(blur_um=0.0, shot_noise=0.0, read_noise=0.0),
                     background=Background(texture=0.0, fibres=0.0, halo=0.0))
    config = replace(config, cells=tuple(replace(c, texture=0.0, nucleus_prob=0.0,
                                                 nucleolus_prob=0.0) for c in config.cells))
    drawn = render_scene(config, (256, 256), np.random.default_rng(5))
    kin = render_scene(replace(config, kin_stain=1.0), (256, 256), np.random.default_rng(5))
    labels = drawn[1]
    assert np.array_equal(labels, kin[1])
    inner = ndi.binary_erosion(labels > 0, iterations=3)
    gray = [im.astype(float).mean(axis=-1) for im in (drawn[0], kin[0])]

    def interior(image, cell):
        return np.median(image[(labels == cell) & inner])

    pairs = set()
    for a, b in ((labels[:-1], labels[1:]), (labels[:, :-1], labels[:, 1:])):
        touch = (a != b) & (a > 0) & (b > 0)
        pairs |= {tuple(sorted(p)) for p in zip(a[touch].tolist(), b[touch].tolist())}
    gaps = [[abs(interior(g, i) - interior(g, j)) for g in gray] for i, j in pairs
            if ((labels == i) & inner).sum() > 20 and ((labels == j) & inner).sum() > 20]
    assert len(gaps) >= 5
    gaps = np.array(gaps)
    assert np.median(gaps[:, 1]) < 0.5 * np.median(gaps[:, 0])  # the pairs' stains closer
    alone = [c for c in np.unique(labels[labels > 0]) if not any(c in p for p in pairs)]
    assert alone and all(interior(gray[0], c) == interior(gray[1], c) for c in alone
                         if ((labels == c) & inner).sum() > 20)
