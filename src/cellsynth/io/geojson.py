"""Cell outlines drawn in QuPath (or any GeoJSON writer) as instance label maps.

A biologist annotates cells as polygons in QuPath and exports them with *File > Export
objects as GeoJSON*; ``labels/<id>.geojson`` beside ``images/<id>.tif`` is then a labeled
image wherever cellsynth reads one (train, fine-tune, evaluate, experiments, export).

Coordinates are the full-resolution image's pixels, (x, y) from its top-left corner, with
pixel (row r, column c) covering [c, c + 1) x [r, r + 1) (QuPath's convention, and what
``cellsynth export --to geojson`` writes): a pixel belongs to a cell when its centre lies
inside the polygon. Each Polygon or MultiPolygon feature is one cell (its holes stay
background); where cells overlap, the later feature wins. A QuPath *annotation* that
encloses the centres of two or more other objects (detections, cells or annotations) is a
region that was searched or annotated in, not a cell, and is left out with a note; an
annotation that encloses none or one is a cell drawn by hand (the cells someone added with
the brush after QuPath's detection, or drew inside a region rectangle, or kept after
importing cellsynth's predictions as annotations to correct them). Features of other
geometries (points, lines) are not cells and are counted in a note.

QuPath's *cell* objects carry two outlines: the cell (``geometry``; after QuPath's cell
detection an expansion of the nucleus by a fixed distance, not a traced membrane) and the
nucleus (``nucleusGeometry``, the detected one). ``geometry="cell"`` (the default) draws the
first, ``geometry="nucleus"`` the second wherever a feature has one (others keep their
outline): a dataset folder chooses with ``"geojson_geometry": "nucleus"`` in its meta.json.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import ImageReadError
from cellsynth.io.images import GEOJSON_SUFFIX

__all__ = ["GEOJSON_SUFFIX", "GEOMETRIES", "geojson_extent", "read_geojson_labels",
           "read_geojson_regions"]

GEOMETRIES = ("cell", "nucleus")  # which outline of a QuPath cell becomes the label
_CELL_TYPES = ("detection", "cell")  # QuPath objectType values of segmented objects


def _features(data: Any, path: Path) -> list[dict[str, Any]]:
    """The features of a FeatureCollection, a bare list of features (QuPath's older export)
    or a single Feature."""
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        data = data.get("features", [])
    elif isinstance(data, dict) and data.get("type") in ("Feature", *_GEOMETRY_TYPES):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(f, dict) for f in data):
        raise ImageReadError(f"{path}: not GeoJSON features (expected a FeatureCollection "
                             f"or a list of Features, as QuPath exports)")
    # bare geometries (a list of Polygons, as some scripts write them): features without
    # properties (they were counted as "not polygons")
    return [{"type": "Feature", "geometry": f, "properties": {}}
            if f.get("type") in _GEOMETRY_TYPES else f for f in data]


_GEOMETRY_TYPES = ("Polygon", "MultiPolygon", "GeometryCollection", "Point", "MultiPoint",
                   "LineString", "MultiLineString")


def _read_features(path: Path) -> list[dict[str, Any]]:
    """The features of a GeoJSON file (see :func:`_features`); an unreadable file is one
    line naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ImageReadError(f"{path}: cannot read GeoJSON: {err}") from err
    return _features(data, path)


def _object_type(feature: dict[str, Any]) -> str:
    properties = feature.get("properties") or {}
    return str(properties.get("objectType", "annotation")).lower()


def _class_name(feature: dict[str, Any]) -> str | None:
    """The QuPath classification of a feature (``{"name": "Neuron", ...}``, or a plain
    string in some writers), or None."""
    value = (feature.get("properties") or {}).get("classification")
    if isinstance(value, dict):
        value = value.get("name")
    return str(value) if value else None


def _polygons(geometry: dict[str, Any]) -> list[list[Any]] | None:
    """Polygons (each a list of rings, the first the outline) of a (Multi)Polygon or of
    the polygons in a GeometryCollection, else None."""
    kind = geometry.get("type")
    if kind == "Polygon":
        return [geometry.get("coordinates", [])]
    if kind == "MultiPolygon":
        return list(geometry.get("coordinates", []))
    if kind == "GeometryCollection":  # its polygons (its points and lines are no outline)
        parts = [_polygons(g) for g in geometry.get("geometries") or []
                 if isinstance(g, dict)]
        polygons = [polygon for part in parts if part for polygon in part]
        return polygons or None
    return None


_TIE = 1e-6  # px: how far rings move so that no pixel centre lies on them (see below)


def _ring_pixels(ring: Any, shape: tuple[int, int], path: Path) -> tuple[np.ndarray, ...]:
    """(rows, cols) of the pixels of ``shape`` whose centres lie inside the ring."""
    from skimage.draw import polygon as fill

    try:
        points = np.asarray(ring, dtype=np.float64)
    except (ValueError, TypeError):  # ragged or not numbers
        points = np.zeros((0,))
    if points.ndim != 2 or points.shape[1] < 2 or not np.isfinite(points[:, :2]).all():
        raise ImageReadError(f"{path}: a polygon ring is not a list of finite [x, y] points")
    # pixel centres lie at integer + 0.5 in these coordinates, at integers for skimage; a
    # centre exactly on an edge (a cut corner of an outline exported at a coarser pyramid
    # level and scaled up passes through them) is inside on one side of the ring only, not
    # on all (skimage's rule: cells read back 2 % larger): the ring moved by a hair, along
    # neither axis nor diagonal, so that edges of every direction split their ties
    return fill(points[:, 1] - 0.5 + 2 * _TIE, points[:, 0] - 0.5 + _TIE, shape)


def _ring_array(ring: Any) -> np.ndarray | None:
    """A GeoJSON ring as an (N, 2) array, or None where it is malformed (left to
    :func:`_ring_pixels`, which names the file when it draws it)."""
    try:
        ring = np.asarray(ring, np.float64)
    except (ValueError, TypeError):
        return None
    return ring[:, :2] if ring.ndim == 2 and ring.shape[1] >= 2 and len(ring) >= 3 else None


def _outer_rings(feature: dict[str, Any]) -> list[np.ndarray]:
    """The outlines of a (Multi)Polygon feature as (N, 2) arrays (malformed ones left out)."""
    rings = (_ring_array(polygon[0]) for polygon in _polygons(feature.get("geometry") or {})
             or [] if polygon)
    return [ring for ring in rings if ring is not None]


def _holes(feature: dict[str, Any]) -> list[np.ndarray]:
    """The holes of all of a (Multi)Polygon feature's polygons as (N, 2) arrays, in one list
    (malformed ones left out)."""
    rings = (_ring_array(ring) for polygon in _polygons(feature.get("geometry") or {}) or []
             for ring in (polygon or [])[1:])
    return [ring for ring in rings if ring is not None]


def _split_regions(features: list[dict[str, Any]]
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(cells, regions, cells outside every region's box) of ``features``: the regions are
    the annotations that enclose the centres of >= 2 other features (QuPath's searched or
    annotated regions: around detections, or around cells drawn as annotations too, the
    only kind in a file of hand-drawn cells); annotations enclosing fewer are hand-drawn
    cells."""
    from skimage.measure import points_in_poly

    owner, centres = [], []
    for i, feature in enumerate(features):
        for ring in _outer_rings(feature)[:1]:
            owner.append(i)
            centres.append(ring.mean(axis=0))
    owner_of = np.array(owner, dtype=np.int64)
    points = np.array(centres, dtype=np.float64).reshape(-1, 2)
    kept, regions = [], []
    boxes, region_ids = [], []  # (low, high) of each region's outlines; their indices
    for i, feature in enumerate(features):
        if _object_type(feature) == "annotation" and len(points) > 1:
            enclosed: list[int] = []
            holes = _holes(feature)  # (a ring-shaped cell around others: the cells in its
            # hole are beside it, not in it)
            for ring in _outer_rings(feature):
                low, high = ring.min(axis=0), ring.max(axis=0)  # (its box first: cheap)
                near = np.flatnonzero(((points >= low) & (points <= high)).all(axis=1)
                                      & (owner_of != i))
                if near.size:
                    inside = near[points_in_poly(points[near], ring)]
                    for hole in holes:
                        inside = inside[~points_in_poly(points[inside], hole)] \
                            if inside.size else inside
                    enclosed += owner_of[inside].tolist()
            if len(enclosed) >= 2 and not _one_class(feature, [features[j] for j in enclosed]):
                regions.append(feature)
                region_ids.append(i)
                boxes += [(r.min(axis=0), r.max(axis=0)) for r in _outer_rings(feature)]
                continue
        kept.append(feature)
    outside = 0
    if boxes:  # (cells neither trained on nor scored: said, not dropped in silence)
        cell = ~np.isin(owner_of, region_ids)
        inside = np.zeros(len(points), bool)
        for low, high in boxes:
            inside |= ((points >= low) & (points <= high)).all(axis=1)
        outside = int(np.count_nonzero(cell & ~inside))
    return kept, regions, outside


def _one_class(feature: dict[str, Any], enclosed: list[dict[str, Any]]) -> bool:
    """Whether ``feature`` and what it encloses are hand-drawn annotations of one named
    class (a "Neuron" drawn over by two smaller "Neuron"s): cells drawn over each other,
    not a region, which is left unclassified, or given QuPath's Region* or a tissue class
    ("Tumor") around cells of their own classes or none."""
    name = _class_name(feature)
    return name is not None and not name.lower().startswith("region") and all(
        _object_type(f) == "annotation" and _class_name(f) == name for f in enclosed)


REGION_FILL = 0.95  # a region covering less of its box is not a rectangle: said

# the last GeoJSON file parsed: {"key": (path, mtime_ns, size), "parsed": (cells, regions)}
_LAST: dict[str, Any] = {}


def _cells_and_regions(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(cell features, region features, cells outside the regions) of a GeoJSON file
    (:func:`_split_regions`), parsed
    once while the file is unchanged: a region-annotated image's cells and then its regions
    are read one after the other, and a QuPath export of a section holds 10^5 cells."""
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except OSError:
        key = None  # (_read_features says what is wrong with it)
    if key is not None and _LAST.get("key") == key:
        return _LAST["parsed"]
    parsed = _split_regions(_read_features(path))
    _LAST.clear()  # (one file kept: a folder's files are read one by one)
    if key is not None:
        _LAST.update(key=key, parsed=parsed)
    return parsed


def geojson_extent(path: str | Path) -> tuple[int, int]:
    """(H, W) that holds every cell and region of a GeoJSON file, from (0, 0): the size to
    draw it at where its image is not at hand (a viewer opening a folder of outlines)."""
    cells, regions, _ = _cells_and_regions(Path(path))
    rings = [ring for feature in (*cells, *regions) for ring in _outer_rings(feature)]
    if not rings:
        return 1, 1
    x, y = np.concatenate(rings).max(axis=0)
    return max(1, int(np.ceil(y))), max(1, int(np.ceil(x)))


def read_geojson_regions(path: str | Path, shape: tuple[int, int]
                         ) -> list[tuple[slice, slice]]:
    """The boxes (row and column slices within ``shape``) of a GeoJSON file's regions: the
    annotations that enclose cells (QuPath's rectangle or polygon drawn around the part of
    a larger image whose cells were outlined, or searched by its cell detection). Cells
    outside every region were not annotated, so they must not count as background: a
    labeled image with regions trains and is scored inside their boxes only. [] where the
    file has none (every cell of the image annotated). A region that is not a rectangle
    is used by its box, said in one line (cells between its outline and its box count as
    background there)."""
    from cellsynth.hardware import announce

    path = Path(path)
    boxes, loose = [], 0
    for feature in _cells_and_regions(path)[1]:
        for ring in _outer_rings(feature):
            (x0, y0), (x1, y1) = ring.min(axis=0), ring.max(axis=0)
            # the pixels whose centre is inside the box, as cells are drawn
            rows = slice(max(0, int(np.ceil(y0 - 0.5))), min(shape[0], int(np.floor(y1 - 0.5)) + 1))
            cols = slice(max(0, int(np.ceil(x0 - 0.5))), min(shape[1], int(np.floor(x1 - 0.5)) + 1))
            if rows.stop <= rows.start or cols.stop <= cols.start:
                continue  # (outside the image)
            x, y = ring[:, 0], ring[:, 1]
            area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
            loose += area < REGION_FILL * (x1 - x0) * (y1 - y0)
            boxes.append((rows, cols))
    outside = _cells_and_regions(path)[2]
    if boxes and outside:
        announce(f"{path}: {outside} cell(s) lie outside its {len(boxes)} annotated "
                 f"region(s) and are not used: only the regions count (a region is an "
                 f"annotation enclosing 2 or more others; give it a cell's class if it is "
                 f"a cell)")
    if loose:
        announce(f"{path}: {loose} of {len(boxes)} region(s) are not rectangles; each is used "
                 f"by its box, where unannotated cells between its outline and the box count "
                 f"as background (draw regions with QuPath's rectangle tool)")
    return boxes


def read_geojson_labels(path: str | Path, shape: tuple[int, int], *,
                        geometry: str = "cell") -> np.ndarray:
    """The instance label map (``shape``, uint32; cells numbered 1.. in file order) of the
    polygons in a GeoJSON file; see the module's notes on which features are cells and
    which of a QuPath cell's outlines ``geometry`` ("cell" or "nucleus") draws."""
    from cellsynth.hardware import announce

    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, not {geometry!r}")
    path = Path(path)
    features, regions, _ = _cells_and_regions(path)
    labels = np.zeros(shape, np.uint32)
    skipped = 0
    outside = 0  # polygons with no pixel centre in the image
    index = 0
    nuclei = 0  # features with a nucleus outline
    for feature in features:
        nucleus = feature.get("nucleusGeometry")
        nuclei += isinstance(nucleus, dict)
        outline = nucleus if geometry == "nucleus" and isinstance(nucleus, dict) else None
        polygons = _polygons(outline or feature.get("geometry") or {})
        if polygons is None:
            skipped += 1
            continue
        index += 1
        drawn = False
        for rings in polygons:  # drawn where they lie: no image-sized mask per cell
            if not rings:
                continue
            rows, cols = _ring_pixels(rings[0], shape, path)
            if len(rings) > 1:  # its holes are not drawn: a cell inside one stays itself
                flat = rows.astype(np.int64) * shape[1] + cols
                holes = [_ring_pixels(hole, shape, path) for hole in rings[1:]]
                keep = ~np.isin(flat, np.concatenate(
                    [r.astype(np.int64) * shape[1] + c for r, c in holes]))
                rows, cols = rows[keep], cols[keep]
            drawn |= bool(rows.size)
            labels[rows, cols] = index
        outside += not drawn
    if outside:
        warnings.warn(f"{path}: {outside} of {index} polygon(s) cover no pixel of the "
                      f"{shape[0]}x{shape[1]} image" + (
                          " (outlines in another image's coordinates, e.g. a whole slide's "
                          "exported for a crop of it?)" if outside == index else ""),
                      stacklevel=2)
    if regions:
        announce(f"{path}: {len(regions)} annotation(s) enclosing 2 or more other objects are "
                 f"regions, not cells, and were left out")
    if skipped:
        announce(f"{path}: {skipped} feature(s) that are not polygons (points, lines) are not "
                 f"cells and were left out")
    if nuclei and geometry == "cell":
        announce(f"{path.parent}: QuPath cells carry nucleus outlines too; the cell outlines "
                 f"are drawn (for the nuclei: \"geojson_geometry\": \"nucleus\" in the "
                 f"dataset's meta.json)")
    return labels
