"""Tiled prediction: every cell exactly once, whatever the tiling (no model needed)."""

import numpy as np
import pytest
from skimage.measure import regionprops

from cellsynth.errors import ImageReadError
from cellsynth.evaluate import matching
from cellsynth.segment.tiles import (
    PaintedLabels,
    ProposalStore,
    TileCount,
    balanced_tile,
    blank_tile,
    cell_masks,
    contours_to_labels,
    offset_contours,
    open_large_image,
    predict_tiled,
    tile_origins,
    tiled_proposals,
)


def _disks(shape, n, radius, seed):
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    k = 0
    while k < n:
        cy, cx = rng.uniform(radius, shape[0] - radius), rng.uniform(radius, shape[1] - radius)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        if labels[disk].any():
            continue
        k += 1
        labels[disk] = k
    return labels


def _pixel_centre_contour(mask, samples):
    """A cell's outline as a CPN draws it: through its boundary pixels' centres (as x, y),
    traced by OpenCV as celldetection's target generator does."""
    import cv2

    found = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(found[-2], key=len)[:, 0, :].astype(np.float32)  # (N, 2) as (x, y)
    return contour[np.linspace(0, len(contour) - 1, samples).astype(int)]


def _oracle(labels):
    """A perfect 'model': proposes every cell fully inside the tile (plus cut-off pieces)."""
    def predictor(tiles):
        out = []
        for tile in tiles:
            lab = tile[..., 0].astype(np.int32)
            contours, scores = [], []
            for region in regionprops(lab):
                contours.append(_pixel_centre_contour(lab == region.label, 48))
                touches = (region.bbox[0] == 0 or region.bbox[1] == 0
                           or region.bbox[2] == lab.shape[0] or region.bbox[3] == lab.shape[1])
                scores.append(0.6 if touches else 0.95)
            out.append((np.array(contours, np.float32).reshape(-1, 48, 2),
                        np.array(scores, np.float32)))
        return out
    return predictor


def test_tile_origins_cover_with_overlap():
    starts = tile_origins(1000, 256, 64)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 256 - 64 for a, b in zip(starts, starts[1:]))
    assert tile_origins(100, 256, 64) == [0]
    with pytest.raises(ValueError, match="overlap"):
        tile_origins(1000, 64, 64)


@pytest.mark.parametrize("length", [96, 512, 1100, 2048, 5000, 20000])
def test_balanced_tiles_are_no_more_and_no_larger_than_needed(length):
    for tile in (512, 1024):
        size = balanced_tile(length, tile, 96)
        assert size <= tile and (size % 32 == 0 or size == length)
        starts = tile_origins(length, size, 96)
        assert len(starts) == len(tile_origins(length, tile, 96))
        assert starts[0] == 0 and starts[-1] + min(size, length) == length
        assert all(b - a <= size - 96 for a, b in zip(starts, starts[1:]))  # overlap kept
    assert balanced_tile(2048, 1024, 96) == 768  # 3 x 768 px computed instead of 3 x 1024


def test_large_image_no_duplicates_no_seams():
    labels = _disks((700, 900), 160, 9, seed=0)
    image = labels[..., None].astype(np.float32)
    predicted = predict_tiled(image, _oracle(labels), tile=160, overlap=48, batch=3)
    result = matching(labels, predicted, thresholds=[0.5, 0.8])
    assert result.n_pred == result.n_gt == 160  # no duplicates, nothing lost at borders
    assert result.f1.tolist() == [1.0, 1.0]


def test_a_stopped_prediction_resumes_at_the_first_unfinished_row(tmp_path):
    labels = _disks((500, 420), 60, 9, seed=1)
    image = labels[..., None].astype(np.float32)
    oracle, seen = _oracle(labels), []

    def predictor(tiles):
        seen.append(len(tiles))
        if stop_after is not None and sum(seen) > stop_after:
            raise KeyboardInterrupt
        return oracle(tiles)

    kwargs = dict(tile=160, overlap=48, batch=2)
    rows, cols = len(tile_origins(500, 160, 48)), len(tile_origins(420, 160, 48))
    stop_after = None
    expected = tiled_proposals(image, predictor, **kwargs)
    key = {"model": "oracle", "tile": 160}
    seen.clear()
    stop_after = cols + 1  # killed in the second row: only the first row is kept
    with pytest.raises(KeyboardInterrupt):
        tiled_proposals(image, predictor, store=ProposalStore(tmp_path / "p", key), **kwargs)
    assert sorted(f.name for f in (tmp_path / "p").iterdir()) == ["key.json", "row00000.npz"]
    seen.clear()
    stop_after = None
    resumed = tiled_proposals(image, predictor, store=ProposalStore(tmp_path / "p", key),
                              **kwargs)
    assert sum(seen) == (rows - 1) * cols  # the first row was not predicted again
    for a, b in zip(resumed, expected):
        np.testing.assert_array_equal(a, b)
    seen.clear()  # proposals made for another model or tiling are not used
    tiled_proposals(image, predictor, store=ProposalStore(tmp_path / "p", {**key, "tile": 1}),
                    **kwargs)
    assert sum(seen) == rows * cols


def test_duplicates_are_painted_once():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float32)
    contours = np.stack([square, square + 0.5, square + 30])
    labels = contours_to_labels(contours, np.array([0.9, 0.8, 0.7]), (50, 50))
    assert labels.max() == 2
    assert labels[5, 5] == 1 and labels[35, 35] == 2
    thresholded = contours_to_labels(contours, np.array([0.9, 0.8, 0.7]), (50, 50),
                                     score_thresh=0.75)
    assert thresholded.max() == 1


def _random_polygons(n, shape, seed):
    """Overlapping star-shaped polygons of mixed sizes, some cut by the image border."""
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    centres = rng.uniform([-10, -10], [shape[1] + 10, shape[0] + 10], (n, 2))
    radii = rng.uniform(2, 30, (n, 1)) * rng.uniform(0.6, 1.4, (n, 24))
    contours = np.stack([centres[:, :1] + radii * np.cos(angles),
                         centres[:, 1:] + radii * np.sin(angles)], axis=-1)
    scores = rng.choice(np.linspace(0.5, 1.0, 40), n)  # ties too: the order must match
    return contours.astype(np.float32), scores.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_painting_window_by_window_equals_painting_the_whole_image(seed):
    shape = (301, 257)
    contours, scores = _random_polygons(400, shape, seed)
    whole, id_scores = contours_to_labels(contours, scores, shape, score_thresh=0.6,
                                          return_scores=True)
    painted = PaintedLabels(contours, scores, shape, score_thresh=0.6, grid=16)
    assert 50 < painted.n_cells < 400  # proposals were dropped as mostly covered
    assert painted.n_cells == whole.max()
    np.testing.assert_array_equal(painted.id_scores, id_scores)
    np.testing.assert_array_equal(np.asarray(painted), whole)
    for y0, x0, y1, x1 in [(0, 0, 64, 64), (37, 101, 211, 256), (300, 0, 301, 257)]:
        np.testing.assert_array_equal(painted[y0:y1, x0:x1], whole[y0:y1, x0:x1])
    np.testing.assert_array_equal(painted[5:200:2, ::3], whole[5:200:2, ::3])


def test_one_painting_serves_every_threshold():
    rng = np.random.default_rng(0)
    centres = rng.uniform(5, 75, (40, 2))
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    contours = centres[:, None, :] + 6 * np.stack([np.cos(angles), np.sin(angles)], -1)
    scores = rng.uniform(0.5, 1.0, 40)
    labels, id_scores = contours_to_labels(contours, scores, (80, 80), return_scores=True)
    for t in (0.6, 0.8, 0.95):
        direct = contours_to_labels(contours, scores, (80, 80), score_thresh=t)
        np.testing.assert_array_equal(labels * (id_scores[labels] >= t), direct)


def _pyramid(path, image):
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        tif.write(image, subifds=2, tile=(64, 64), metadata={"axes": "YX"})
        tif.write(image[::2, ::2], subfiletype=1, tile=(64, 64))
        tif.write(image[::4, ::4], subfiletype=1, tile=(64, 64))


def test_pyramidal_tiff_opens_lazily_at_any_level(tmp_path):
    image = np.random.default_rng(0).integers(0, 4096, (256, 320), dtype=np.uint16)
    _pyramid(tmp_path / "pyr.ome.tif", image)
    full = open_large_image(tmp_path / "pyr.ome.tif")
    assert full.shape == (256, 320)
    np.testing.assert_array_equal(np.asarray(full[10:74, 20:84]), image[10:74, 20:84])
    half = open_large_image(tmp_path / "pyr.ome.tif", level=1)
    assert half.shape == (128, 160)
    with pytest.raises(ImageReadError, match=r"pyr.ome.tif: no resolution level 3; the image "
                       r"has 3 \(0-2, 0 = full resolution\)$"):
        open_large_image(tmp_path / "pyr.ome.tif", level=3)


def test_ome_zarr_axes_are_honoured(tmp_path):
    import zarr

    from cellsynth.io.images import select_channel
    from cellsynth.io.normalize import intensity_range

    image = np.random.default_rng(0).integers(0, 255, (2, 96, 128), dtype=np.uint8)  # (c, y, x)
    root = zarr.open_group(str(tmp_path / "img.zarr"), mode="w")
    root.create_array("0", data=image, chunks=(1, 32, 32))
    root.create_array("1", data=image[:, ::2, ::2], chunks=(1, 32, 32))
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
        {"name": "x", "type": "space"}], "datasets": [{"path": "0"}, {"path": "1"}]}]
    lazy = open_large_image(tmp_path / "img.zarr")
    assert lazy.shape == (96, 128, 2)  # not H = 2
    np.testing.assert_array_equal(lazy[5:9, 7:20], image[:, 5:9, 7:20].transpose(1, 2, 0))
    second = select_channel(lazy, 1, where="img.zarr")
    assert second.shape == (96, 128)
    np.testing.assert_array_equal(second[0:32, 0:32], image[1, :32, :32])
    low, high = intensity_range(second)
    assert low[0] == np.percentile(image[1], 1) and high[0] == np.percentile(image[1], 99.8)
    assert open_large_image(tmp_path / "img.zarr", level=1).shape == (48, 64, 2)
    with pytest.raises(ImageReadError, match="img.zarr: no resolution level 2; the image has 2"):
        open_large_image(tmp_path / "img.zarr", level=2)


def test_a_bioformats2raw_container_is_read_as_its_series_0(tmp_path):
    """bioformats2raw, the usual converter from vendor formats, puts the NGFF image in series
    ``0`` of a group marked ``bioformats2raw.layout``: it was "Zarr group holds no array"
    (audit 7); now its image, levels and pixel size, as napari-ome-zarr and QuPath open it."""
    import zarr

    from cellsynth.io.resample import read_pixel_size
    from cellsynth.io.sections import pyramid_levels

    image = np.random.default_rng(0).integers(0, 255, (96, 128), dtype=np.uint8)
    root = zarr.open_group(str(tmp_path / "slide.zarr"), mode="w")
    root.attrs["bioformats2raw.layout"] = 3
    series = root.create_group("0")
    series.create_array("0", data=image, chunks=(32, 32))
    series.create_array("1", data=image[::2, ::2], chunks=(32, 32))
    series.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.5]}]},
        {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}]}]}]
    np.testing.assert_array_equal(open_large_image(tmp_path / "slide.zarr")[:, :], image)
    assert open_large_image(tmp_path / "slide.zarr", level=1).shape == (48, 64)
    assert [lv.shape for lv in pyramid_levels(tmp_path / "slide.zarr")] == [(96, 128), (48, 64)]
    assert read_pixel_size(tmp_path / "slide.zarr") == 0.5


def test_predict_reads_pyramids_and_large_compressed_tiffs_lazily(tmp_path, monkeypatch):
    import tifffile

    from cellsynth.segment import folders

    image = np.zeros((256, 256), np.uint8)
    _pyramid(tmp_path / "pyr.tif", image)
    tifffile.imwrite(tmp_path / "flat.tif", image, compression="zlib")  # 1 kB on disk
    assert folders._read_lazily(tmp_path / "pyr.tif")
    assert not folders._read_lazily(tmp_path / "flat.tif")
    monkeypatch.setattr(folders, "LAZY_PIXELS", 256 * 255)  # pixels, not compressed bytes
    assert folders._read_lazily(tmp_path / "flat.tif")


def test_offset_moves_every_vertex_outward_by_the_distance_in_either_orientation():
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    circle = np.stack([50 + 10 * np.cos(t), 40 + 10 * np.sin(t)], axis=-1)[None]
    for contour in (circle, circle[:, ::-1]):  # counter-clockwise and clockwise
        radius = np.linalg.norm(offset_contours(contour, 0.5)[0] - [50, 40], axis=-1)
        np.testing.assert_allclose(radius, 10.5, atol=1e-3)
        inward = np.linalg.norm(offset_contours(contour, -2.0)[0] - [50, 40], axis=-1)
        np.testing.assert_allclose(inward, 8.0, atol=1e-3)


def test_a_cpn_target_outline_paints_back_its_cell():
    # What a CPN learns (and so predicts) is a smooth Fourier outline through the centres of
    # a cell's boundary pixels. Filled by pixel centre as given, a Nissl-sized soma loses
    # about half of its boundary and could never pass IoU 0.9.
    from cellsynth.segment.cpn import training_targets

    labels = _disks((96, 96), 6, 11.3, seed=4)
    targets = training_targets(labels, samples=64, order=8, rng=np.random.default_rng(0))
    contours = targets["sampled_contours"][0]
    assert contours.shape == (6, 64, 2)
    scores = np.linspace(0.99, 0.9, 6).astype(np.float32)
    for offset, low, high in ((0.5, 0.93, 1.0), (0.0, 0.75, 0.9)):
        painted = contours_to_labels(contours, scores, labels.shape, offset=offset)
        ious = []
        for i in range(1, 7):
            cell = labels == i
            ids, counts = np.unique(painted[cell], return_counts=True)
            other = painted == ids[np.argmax(counts)]
            ious.append((cell & other).sum() / (cell | other).sum())
        assert low <= min(ious) and max(ious) <= high, (offset, ious)


def _skimage_pixels(contour, shape):
    from skimage.draw import polygon

    c = np.asarray(contour, np.float64)
    mask = np.zeros(shape, bool)
    mask[polygon(c[:, 1], c[:, 0], shape=shape)] = True
    return mask


def test_scanline_cell_masks_are_the_pixels_skimage_draws():
    """cell_masks fills polygons by scanlines for speed; it must give the very pixels of
    skimage.draw.polygon (centre inside, on an edge or on a vertex), including polygons on
    pixel centres (integer and half-integer vertices), clipped at the image border, of
    either orientation, self-intersecting, and larger than the padded size classes."""
    rng = np.random.default_rng(0)
    shape = (60, 70)
    polygons = []
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    for t in range(600):
        r = rng.uniform(3, 14) * (1 + 0.3 * np.sin(3 * theta + rng.uniform(0, 6)))
        r = r + rng.normal(0, 0.6, theta.size)
        c = np.stack([rng.uniform(-8, 78) + r * np.cos(theta),
                      rng.uniform(-8, 68) + r * np.sin(theta)], axis=1)
        if t % 3 == 0:
            c = np.round(c)
        if t % 5 == 0:
            c = np.clip(c, 0, 59)
        if t % 7 == 0:
            c = np.round(c * 2) / 2
        if t % 11 == 0:
            c = c[::-1]
        polygons.append(c)
    for t in range(100):  # random 48-gons cross themselves
        c = rng.uniform(0, 40, (48, 2))
        polygons.append(np.round(c) if t % 2 else c)
    big = 150 * np.stack([np.cos(theta), np.sin(theta)], axis=1) + [35, 30]  # > every class
    polygons.append(big)
    contours = np.stack(polygons).astype(np.float32)
    order = rng.permutation(len(contours))
    seen = []
    for k, y0, x0, mask in cell_masks(contours, order, shape, offset=0.0):
        seen.append(k)
        got = np.zeros(shape, bool)
        got[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]] = mask
        assert np.array_equal(got, _skimage_pixels(contours[k], shape)), k
    assert seen == order.tolist()
    # with the half-pixel outline offset: the offset polygon's pixels
    for k, y0, x0, mask in cell_masks(contours[:50], np.arange(50), shape):
        got = np.zeros(shape, bool)
        got[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]] = mask
        assert np.array_equal(got, _skimage_pixels(offset_contours(contours[k][None])[0],
                                                   shape)), k


def _glass(shape, seed=0, noise=0.01):
    """Empty glass as a scanner sees it: bright, noisy, shaded by 0.3 from one side to the
    other (vignetting)."""
    rng = np.random.default_rng(seed)
    shading = np.linspace(0.6, 0.9, shape[1], dtype=np.float32)[None, :]
    return (shading + rng.normal(0, noise, shape)).astype(np.float32)


def test_glass_is_blank_and_one_faint_cell_is_not():
    glass = _glass((130, 97))  # no multiple of the 4 px blocks
    assert blank_tile(glass) and blank_tile(np.repeat(glass[..., None], 3, axis=-1))
    assert not blank_tile(glass, 0.0)  # 0: every tile is predicted
    yy, xx = np.mgrid[:130, :97]
    for cy, cx in ((40, 30), (128, 95)):  # inside, and in the last partial block corner
        cell = glass - 0.1 * (((yy - cy) ** 2 + (xx - cx) ** 2) <= 36)  # contrast 0.1, r 6
        assert not blank_tile(cell), (cy, cx)
    rgb = np.repeat(glass[..., None], 3, axis=-1)
    rgb[35:47, 25:37, 2] -= 0.1  # visible in one colour channel only
    assert not blank_tile(rgb)
    noisy = _glass((256, 256), noise=0.08)  # a noisy camera: its own noise is allowed for
    assert blank_tile(noisy)
    yy, xx = np.mgrid[:256, :256]
    assert not blank_tile(noisy - 0.3 * (((yy - 128) ** 2 + (xx - 128) ** 2) <= 100))


def test_blank_tiles_are_not_predicted_and_no_cell_is_lost():
    labels = _disks((400, 700), 30, 9, seed=2)
    labels[:, 300:] = 0  # cells on the left, glass on the right
    # channel 0 the labels (what the oracle reads), channel 1 noisy shaded glass
    image = np.stack([labels.astype(np.float32), _glass(labels.shape)], axis=-1)
    oracle, seen = _oracle(labels), []

    def predictor(tiles):
        seen.append(len(tiles))
        return oracle(tiles)

    kwargs = dict(tile=160, overlap=48, batch=3)
    every = TileCount()
    contours0, scores0 = tiled_proposals(image, predictor, count=every, **kwargs)
    assert every.blank == 0 and sum(seen) == every.predicted
    seen.clear()
    some = TileCount()
    contours, scores = tiled_proposals(image, predictor, empty_contrast=0.04, count=some,
                                       **kwargs)
    assert some.blank >= 6 and some.predicted + some.blank == every.predicted
    assert sum(seen) == some.predicted  # blank tiles never reach the model
    np.testing.assert_array_equal(contours, contours0)
    np.testing.assert_array_equal(scores, scores0)
    painted = contours_to_labels(contours, scores, labels.shape, score_thresh=0.5)
    assert matching(labels, painted, thresholds=[0.8]).f1.tolist() == [1.0]
