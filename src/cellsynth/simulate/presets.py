"""Typed simulator configs and the built-in presets (merker, nissl, he, fluo).

Every length is in micrometres and converted with ``pixel_size_um`` when a scene is drawn,
so one preset serves any resolution. Stain amounts are optical densities (absorbance,
brightfield) or emission (fluorescence). Densities are cells per 100 x 100 um^2.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from cellsynth.config import ADDED
from cellsynth.errors import ConfigError

__all__ = [
    "CellType", "Background", "Layers", "Vessels", "Staining", "Optics", "Variation",
    "SimulationConfig",
    "PRESETS", "PRESET_COLORS", "COLORS", "preset",
]

# Colour models a preset can be rendered in (see optics.to_intensity).
COLORS = ("gray", "violet", "he", "fluo")


def _check_range(name: str, value: tuple[float, float], low: float = 0.0) -> None:
    if not (low <= value[0] <= value[1]):
        raise ValueError(f"{name} must be an increasing range >= {low}, got {list(value)}")


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


@dataclass(frozen=True)
class CellType:
    """One population of cells (e.g. pyramidal neurons, glia)."""

    name: str
    density: float                           # cells per 100 x 100 um^2 (mean over layers)
    diameter_um: tuple[float, float]         # equivalent diameter, drawn uniformly
    shape: Literal["round", "pyramidal", "elongated"] = "round"
    elongation: tuple[float, float] = (1.0, 1.3)  # axis ratio
    irregularity: float = 0.08               # amplitude of random outline harmonics
    apex: tuple[float, float] = (0.5, 1.1)   # length of a pyramidal apical stub / radius
    stain: tuple[float, float] = (0.5, 0.8)  # mean optical density of the body
    texture: float = 0.25                    # relative granular texture (Nissl bodies, chromatin)
    nucleus_prob: float = 0.0                # chance that a paler nucleus is visible
    nucleus_scale: tuple[float, float] = (0.35, 0.5)  # nucleus radius / body radius
    nucleus_stain: float = 0.5               # nucleus density relative to the body
    nucleolus_prob: float = 0.0              # chance of a dark nucleolus (inside the nucleus)
    nucleolus_um: float = 1.5                # nucleolus diameter
    nucleolus_stain: float = 2.0             # nucleolus density relative to the body
    edge_um: float = 0.6                     # width of the soft outline
    labeled: bool = True                     # False: drawn out of focus and not annotated
    defocus_um: float = 0.0                  # blur of unlabeled (out-of-focus) cells
    layer_phase: float = 0.0                 # where in the layer cycle the type is densest (0..1)
    # how much of the stain follows a dome, 1 - rho^2 (rho the normalised radius), instead
    # of filling the cell evenly; the mean stain stays: the middle is 1 + dome, the rim
    # 1 - dome times the mean. A widefield image sums the stain through the depth: real
    # fluorescent nuclei (dsb2018_fluo/train, by their labels) fall from the middle to the rim
    # as 1 - 0.5 rho^2 (a dome of ~0.35), the thickness of a flattened cap rather than of an
    # ellipsoid, whose rim would be too dark. Fitted on fluorescence, see fit.py
    dome: float = field(default=0.0, metadata=ADDED)
    # False: drawn in focus like the annotated types (shape, texture, occlusion, halo) but left
    # out of the labels: cells that annotators of a dataset do not call cells (on Nissl
    # cortex, pale somata; classed "unlabelled cell" in the class map). Different from
    # ``labeled: False``, which draws a blurred blob.
    annotated: bool = field(default=True, metadata=ADDED)

    def __post_init__(self) -> None:
        if self.density < 0:
            raise ValueError(f"cell type {self.name!r}: density must be >= 0, got {self.density}")
        _check_range(f"cell type {self.name!r}: diameter_um", self.diameter_um, 0.5)
        _check_range(f"cell type {self.name!r}: elongation", self.elongation, 1.0)
        _check_range(f"cell type {self.name!r}: stain", self.stain)
        _check_range(f"cell type {self.name!r}: apex", self.apex)
        _check_range(f"cell type {self.name!r}: nucleus_scale", self.nucleus_scale)
        _check_fraction(f"cell type {self.name!r}: nucleus_prob", self.nucleus_prob)
        _check_fraction(f"cell type {self.name!r}: nucleolus_prob", self.nucleolus_prob)
        _check_fraction(f"cell type {self.name!r}: dome", self.dome)
        if self.nucleus_scale[1] > 0.8:
            raise ValueError(f"cell type {self.name!r}: nucleus_scale must be <= 0.8")


@dataclass(frozen=True)
class Background:
    """Neuropil / stroma between the cells."""

    stain: tuple[float, float] = (0.12, 0.22)  # mean density of the main stain
    counterstain: tuple[float, float] = (0.0, 0.0)  # eosin density (H&E only)
    texture: float = 0.35                   # relative amplitude of the texture
    grain_um: float = 0.7                   # fine grain scale
    mottle_um: float = 5.0                  # coarse blotch scale
    halo: float = 0.5                       # how much paler the neuropil is right around cells
    halo_um: float = 1.5                    # width of that pale rim
    fibres: float = 6.0                     # fibres per 100 x 100 um^2
    fibre_stain: float = 0.12
    fibre_length_um: tuple[float, float] = (15.0, 60.0)
    # Unlabelled structures around and between nuclei (H&E: a nucleus is labelled, its cell
    # body is not). All off (0) by default; then they draw no random numbers.
    bodies: float = 0.0                     # chance that a labelled nucleus shows a cell body
    free_bodies: float = 0.0                # bodies cut beside their nucleus, per 100 x 100 um^2
    body_um: tuple[float, float] = (1.5, 5.0)  # how far a body reaches beyond its nucleus
    body_stain: tuple[float, float] = (0.15, 0.45)  # counterstain added over a body (main
                                                    # stain where there is no counterstain)
    membrane: float = 0.0                   # main stain along a body's outline
    clearing: float = 0.0                   # chance of a clear rim around a labelled nucleus
    clearing_um: tuple[float, float] = (0.5, 1.5)   # width of that rim
    vacuoles: float = 0.0                   # clear round holes per 100 x 100 um^2
    vacuole_um: tuple[float, float] = (2.0, 8.0)    # their diameter

    def __post_init__(self) -> None:
        _check_range("background.stain", self.stain)
        _check_range("background.counterstain", self.counterstain)
        _check_range("background.fibre_length_um", self.fibre_length_um)
        _check_fraction("background.halo", self.halo)
        _check_fraction("background.bodies", self.bodies)
        _check_fraction("background.clearing", self.clearing)
        _check_range("background.body_um", self.body_um)
        _check_range("background.body_stain", self.body_stain)
        _check_range("background.clearing_um", self.clearing_um)
        _check_range("background.vacuole_um", self.vacuole_um, 0.5)
        for name in ("free_bodies", "membrane", "vacuoles"):
            if getattr(self, name) < 0:
                raise ValueError(f"background.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Layers:
    """Layer-like bands along which cell density and size vary (cortical layers)."""

    period_um: tuple[float, float] = (150.0, 400.0)  # width of one band cycle
    density_contrast: float = 0.6     # density varies by a factor 1 +- this
    size_contrast: float = 0.15       # diameters vary by a factor 1 +- this
    orientation_jitter_deg: float = 20.0  # scatter of apex directions around the layer normal

    def __post_init__(self) -> None:
        _check_range("layers.period_um", self.period_um, 1.0)
        _check_fraction("layers.density_contrast", self.density_contrast)
        _check_fraction("layers.size_contrast", self.size_contrast)


@dataclass(frozen=True)
class Vessels:
    """Capillaries: pale elongated lumina lined by elongated endothelial nuclei."""

    density: float = 0.4                  # vessels per 100 x 100 um^2
    width_um: tuple[float, float] = (5.0, 12.0)
    length_um: tuple[float, float] = (30.0, 120.0)
    lumen: float = 0.25                   # background density left inside the lumen
    endothelial_per_100um: float = 4.0    # wall nuclei per 100 um of vessel length
    endothelial_stain: tuple[float, float] = (0.6, 1.0)
    # False: the wall nuclei are drawn as before but left out of the labels (a cell type's
    # ``annotated: false``): annotators of neuronal somata skip the thin dark rods that line
    # capillaries, which a detector pretrained on labelled ones calls cells
    endothelial_annotated: bool = field(default=True, metadata=ADDED)

    def __post_init__(self) -> None:
        if self.density < 0:
            raise ValueError(f"vessels.density must be >= 0, got {self.density}")
        _check_range("vessels.width_um", self.width_um, 0.5)
        _check_range("vessels.length_um", self.length_um, 0.5)
        _check_fraction("vessels.lumen", self.lumen)


@dataclass(frozen=True)
class Staining:
    """How stain amounts become colours, and how uneven the staining is."""

    unevenness: float = 0.15      # std of the smooth log-multiplicative stain field
    scale_um: float = 60.0        # correlation length of that field
    cell_variation: float = 0.15  # relative std of stain between cells
    # Brightfield stain vectors: the absorbance (optical density) in R, G, B of one unit of
    # the main stain and of the counterstain (eosin). None: the colour model's own
    # (optics.STAIN_VECTORS). ``fit-simulator --stains measured`` measures H&E's eosin (Macenko).
    main_vector: tuple[float, float, float] | None = field(default=None, metadata=ADDED)
    counter_vector: tuple[float, float, float] | None = field(default=None, metadata=ADDED)

    def __post_init__(self) -> None:
        if self.unevenness < 0 or self.cell_variation < 0 or self.scale_um <= 0:
            raise ValueError("staining: unevenness, cell_variation >= 0 and scale_um > 0 required")
        for name in ("main_vector", "counter_vector"):
            vector = getattr(self, name)
            if vector is not None and (min(vector) < 0 or max(vector) <= 0):
                raise ValueError(f"staining.{name} must be 3 absorbances >= 0, not all 0, "
                                 f"got {list(vector)}")


@dataclass(frozen=True)
class Optics:
    """Microscope and camera: Gaussian PSF (with an optional wide halo), shot and read
    noise."""

    blur_um: float = 0.5          # PSF sigma
    shot_noise: float = 0.012     # noise std at full intensity (grows with sqrt of intensity)
    read_noise: float = 0.006     # signal-independent noise std
    # Out-of-focus haze of a widefield microscope: this fraction of the light spreads by a
    # second, wide Gaussian (sigma halo_um) instead of the PSF. Real dsb2018 fluorescence
    # nuclei glow 2-4 um past their annotated outline (at 1, 2, 4, 8 px: 0.29, 0.15, 0.07,
    # 0.03 of their mean); a Gaussian PSF alone lets the glow end within 2 px.
    halo: float = field(default=0.0, metadata=ADDED)
    halo_um: float = field(default=3.0, metadata=ADDED)

    def __post_init__(self) -> None:
        if self.blur_um < 0 or self.shot_noise < 0 or self.read_noise < 0:
            raise ValueError("optics: blur_um, shot_noise and read_noise must be >= 0")
        if not 0 <= self.halo < 1 or self.halo_um <= 0:
            raise ValueError(f"optics: halo must lie in [0, 1) and halo_um be > 0, got "
                             f"{self.halo}, {self.halo_um}")


@dataclass(frozen=True)
class Variation:
    """Per-image draws for heterogeneous datasets (several microscopes, magnifications and
    samples in one set, as in the Data Science Bowl 2018). Each factor is drawn log-uniformly
    from its range once per image; (1, 1) switches it off and draws nothing, so images of a
    config without variation do not change."""

    zoom: tuple[float, float] = (1.0, 1.0)        # magnification: the image is rendered at
                                                  # pixel_size_um / zoom (cells zoom x larger)
    density: tuple[float, float] = (1.0, 1.0)     # factor on every cell type's density
    brightness: tuple[float, float] = (1.0, 1.0)  # factor on all stain (cells and background)
    zoom_density_exponent: float = 0.0  # density also x zoom**this: 0 keeps cells per um^2
                                        # (the same tissue seen closer), 2 keeps cells per
                                        # pixel (fields chosen to be full at any magnification)
    # the camera and the focus of each image: factors on the shot and read noise, and on the
    # PSF width (a set from several microscopes, or slides scanned at different focus)
    noise: tuple[float, float] = field(default=(1.0, 1.0), metadata=ADDED)
    blur: tuple[float, float] = field(default=(1.0, 1.0), metadata=ADDED)

    def __post_init__(self) -> None:
        for name in ("zoom", "density", "brightness", "noise", "blur"):
            value = getattr(self, name)
            if not (0 < value[0] <= value[1]):
                raise ValueError(f"variation.{name} must be an increasing range > 0, "
                                 f"got {list(value)}")

    @property
    def active(self) -> bool:
        return any(r[0] != r[1] or r[0] != 1.0 for r in (self.zoom, self.density,
                                                           self.brightness, self.noise,
                                                           self.blur))


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated dataset, except its size, count and seed."""

    preset: str
    pixel_size_um: float
    color: Literal["gray", "violet", "he", "fluo"]
    cells: tuple[CellType, ...]
    background: Background = field(default_factory=Background)
    layers: Layers = field(default_factory=Layers)
    vessels: Vessels = field(default_factory=Vessels)
    staining: Staining = field(default_factory=Staining)
    optics: Optics = field(default_factory=Optics)
    variation: Variation = field(default_factory=Variation)
    max_occlusion: float = 0.35   # a cell may lose at most this fraction of its area to others
    # where a cell covers another, how far its soft edge fades towards the neuropil (1: a pale
    # seam between the two) rather than into the covered cell (0: no seam; touching somata
    # of similar stain then part only by their shapes, as many do in Nissl sections)
    seam: float = field(default=1.0, metadata=ADDED)
    # a cell that covers another takes this fraction of the way from its own stain to the
    # covered cell's (0: independent stains; 1: the same, so only the shapes part them)
    kin_stain: float = field(default=0.0, metadata=ADDED)

    def __post_init__(self) -> None:
        if not self.pixel_size_um > 0:
            raise ValueError(f"pixel_size_um must be > 0, got {self.pixel_size_um}")
        if self.color not in COLORS:
            raise ValueError(f"color must be one of {list(COLORS)}, got {self.color!r}")
        if not any(c.labeled and c.annotated for c in self.cells):
            raise ValueError("cells: at least one labeled and annotated cell type is needed")
        _check_fraction("max_occlusion", self.max_occlusion)
        _check_fraction("seam", self.seam)
        _check_fraction("kin_stain", self.kin_stain)

    @property
    def channels(self) -> int:
        return 1 if self.color in ("gray", "fluo") else 3


def _merker() -> SimulationConfig:
    """BigBrain-like human cortex: 1 um/px Merker (silver) cell-body stain, grayscale."""
    cells = (
        CellType("pyramidal", density=5.0, diameter_um=(12.0, 30.0), shape="pyramidal",
                 elongation=(1.1, 1.6), irregularity=0.1, apex=(0.3, 0.8),
                 stain=(0.75, 1.25), texture=0.3,
                 nucleus_prob=0.75, nucleus_scale=(0.3, 0.42), nucleus_stain=0.45,
                 nucleolus_prob=0.7, nucleolus_um=2.0, nucleolus_stain=2.2, layer_phase=0.0),
        CellType("round_neuron", density=7.0, diameter_um=(9.0, 18.0), shape="round",
                 elongation=(1.0, 1.4), irregularity=0.1, stain=(0.7, 1.2), texture=0.3,
                 nucleus_prob=0.5, nucleus_scale=(0.35, 0.5), nucleus_stain=0.5,
                 nucleolus_prob=0.5, nucleolus_um=1.8, nucleolus_stain=2.0, layer_phase=0.5),
        CellType("glia", density=10.0, diameter_um=(4.0, 8.0), shape="round",
                 elongation=(1.0, 1.6), irregularity=0.1, stain=(1.1, 1.7), texture=0.1,
                 edge_um=0.4, layer_phase=0.25),
        CellType("out_of_focus", density=10.0, diameter_um=(6.0, 22.0), shape="round",
                 elongation=(1.0, 1.5), stain=(0.12, 0.3), texture=0.1, labeled=False,
                 defocus_um=2.5, layer_phase=0.0),
    )
    return SimulationConfig(
        preset="merker", pixel_size_um=1.0, color="gray", cells=cells,
        background=Background(stain=(0.1, 0.2), texture=0.3, grain_um=1.0, mottle_um=6.0,
                              halo=0.5, halo_um=2.0, fibres=5.0, fibre_stain=0.12),
        vessels=Vessels(density=0.15, width_um=(5.0, 12.0), length_um=(30.0, 120.0),
                        lumen=0.45),
        optics=Optics(blur_um=0.5, shot_noise=0.015, read_noise=0.006),
    )


def _nissl() -> SimulationConfig:
    """Rodent cortex, cresyl-violet Nissl, 20x brightfield (0.346 um/px), calibrated on
    the training split of nissl_rat_sscx: ~39 cells per 100 x 100 um^2 (after occlusion),
    median body ~9 um, cells cover ~1/3 of the area, body density 0.35-0.75 and glia ~0.8
    in the green channel, polygonal somata with fine Nissl granules, many pale out-of-focus
    cells."""
    cells = (
        CellType("pyramidal", density=14.0, diameter_um=(10.5, 18.0), shape="pyramidal",
                 elongation=(1.1, 1.6), irregularity=0.16, apex=(0.15, 0.45),
                 stain=(0.3, 0.7), texture=0.22, nucleus_prob=0.5, nucleus_scale=(0.3, 0.42),
                 nucleus_stain=0.75, nucleolus_prob=0.5, nucleolus_um=1.3, nucleolus_stain=1.8,
                 edge_um=1.0),
        CellType("round_neuron", density=19.0, diameter_um=(7.5, 14.0), shape="round",
                 elongation=(1.0, 1.5), irregularity=0.16, stain=(0.3, 0.7), texture=0.22,
                 nucleus_prob=0.4, nucleus_scale=(0.35, 0.5), nucleus_stain=0.75,
                 nucleolus_prob=0.4, nucleolus_um=1.2, nucleolus_stain=1.8, edge_um=1.0,
                 layer_phase=0.5),
        CellType("glia", density=10.0, diameter_um=(4.0, 6.5), shape="round",
                 elongation=(1.0, 1.7), irregularity=0.1, stain=(0.6, 1.1), texture=0.12,
                 edge_um=0.5, layer_phase=0.25),
        CellType("out_of_focus", density=20.0, diameter_um=(6.0, 16.0), shape="round",
                 elongation=(1.0, 1.6), stain=(0.08, 0.22), texture=0.1, labeled=False,
                 defocus_um=2.5),
    )
    return SimulationConfig(
        preset="nissl", pixel_size_um=0.346, color="violet", cells=cells,
        background=Background(stain=(0.1, 0.2), texture=0.22, grain_um=0.5, mottle_um=8.0,
                              halo=0.5, halo_um=1.5, fibres=10.0, fibre_stain=0.08,
                              fibre_length_um=(10.0, 40.0)),
        layers=Layers(period_um=(100.0, 300.0), density_contrast=0.4, size_contrast=0.1),
        vessels=Vessels(density=0.3, width_um=(3.0, 8.0), length_um=(20.0, 80.0), lumen=0.5),
        staining=Staining(unevenness=0.12, scale_um=50.0, cell_variation=0.25),
        optics=Optics(blur_um=0.4, shot_noise=0.012, read_noise=0.005),
    )


def _he() -> SimulationConfig:
    """H&E nuclei (brain tumour / multi-organ, 40x): hematoxylin nuclei on eosin stroma."""
    cells = (
        CellType("nucleus", density=45.0, diameter_um=(6.0, 12.0), shape="round",
                 elongation=(1.0, 1.8), irregularity=0.1, stain=(0.55, 1.0), texture=0.3,
                 nucleolus_prob=0.3, nucleolus_um=1.0, nucleolus_stain=1.6, edge_um=0.4),
        CellType("spindle", density=8.0, diameter_um=(4.0, 7.0), shape="elongated",
                 elongation=(2.0, 3.5), irregularity=0.06, stain=(0.7, 1.1), texture=0.2,
                 edge_um=0.3, layer_phase=0.5),
        CellType("out_of_focus", density=10.0, diameter_um=(5.0, 10.0), stain=(0.1, 0.3),
                 texture=0.1, labeled=False, defocus_um=1.2),
    )
    return SimulationConfig(
        preset="he", pixel_size_um=0.25, color="he", cells=cells,
        background=Background(stain=(0.05, 0.12), counterstain=(0.45, 0.8), texture=0.35,
                              grain_um=0.8, mottle_um=5.0, halo=0.3, halo_um=0.8, fibres=20.0,
                              fibre_stain=0.2, fibre_length_um=(10.0, 50.0),
                              # Unlabelled pink cell bodies with faint membranes, torn clear
                              # rims around nuclei and small vacuoles, as in glioma: without
                              # them a detector fitted to tcga_lgg outlines cell bodies as
                              # nuclei (train split, 300 steps: 0.440 -> 0.685 F1@0.5).
                              bodies=0.6, free_bodies=15.0, membrane=0.08, clearing=0.4,
                              clearing_um=(0.3, 1.5), vacuoles=10.0, vacuole_um=(1.0, 4.0)),
        layers=Layers(period_um=(60.0, 200.0), density_contrast=0.7, size_contrast=0.1),
        vessels=Vessels(density=0.5, width_um=(4.0, 15.0), length_um=(15.0, 60.0), lumen=0.3,
                        endothelial_per_100um=6.0, endothelial_stain=(0.6, 1.0)),
        optics=Optics(blur_um=0.3, shot_noise=0.012, read_noise=0.005),
        # Nuclei that hide up to 35 % of each other show no boundary where they overlap: the
        # fit's estimator counted such pairs as one and fitted too many, too small nuclei
        # (gbm40 / tcga_lgg density +59 % / +34 % against the annotations); at 5 % the fits
        # land at +14 % / -1 % (docs/results.md, fit-simulator).
        max_occlusion=0.05,
    )


def _fluo() -> SimulationConfig:
    """Fluorescence nuclei (DAPI/Hoechst), calibrated on dsb2018_fluo/train, a mix of
    microscopes: per image, nuclei are 9-60 px across (median area ~200 px), cover 2-30 % of
    the area and shine at 15-140 of 255 over a background of 0-30, while nuclei within one
    image look alike. Nominal 0.5 um/px; the magnification varies per image (``variation``)."""
    cells = (
        CellType("nucleus", density=12.0, diameter_um=(7.0, 11.0), shape="round",
                 elongation=(1.0, 1.5), irregularity=0.08, stain=(0.7, 1.0), texture=0.12,
                 nucleolus_prob=0.4, nucleolus_um=1.5, nucleolus_stain=0.6, edge_um=0.6),
        CellType("out_of_focus", density=0.5, diameter_um=(7.0, 11.0), stain=(0.1, 0.25),
                 texture=0.1, labeled=False, defocus_um=2.0),
    )
    return SimulationConfig(
        preset="fluo", pixel_size_um=0.5, color="fluo", cells=cells,
        background=Background(stain=(0.02, 0.15), texture=0.05, grain_um=1.0, mottle_um=20.0,
                              halo=0.0, fibres=0.0),  # nearly flat between nuclei
        layers=Layers(period_um=(100.0, 400.0), density_contrast=0.5, size_contrast=0.1),
        vessels=Vessels(density=0.0),
        staining=Staining(unevenness=0.15, scale_um=80.0, cell_variation=0.15),
        # Noise and PSF matched to the train images' power spectrum (RMS log10 distance 0.11).
        optics=Optics(blur_um=0.4, shot_noise=0.008, read_noise=0.003),
        variation=Variation(zoom=(0.4, 3.0), density=(0.35, 3.0), brightness=(0.08, 0.7),
                            zoom_density_exponent=2.0),
    )


PRESETS = {"merker": _merker, "nissl": _nissl, "he": _he, "fluo": _fluo}
# Colour variants that make sense for each preset (first = default).
PRESET_COLORS = {"merker": ("gray", "violet"), "nissl": ("violet", "gray"),
                 "he": ("he",), "fluo": ("fluo",)}


def preset(name: str, *, pixel_size_um: float | None = None, color: str | None = None
           ) -> SimulationConfig:
    """The built-in config ``name``, optionally at another pixel size or colour variant."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[name]()
    if color is not None and color not in PRESET_COLORS[name]:
        raise ConfigError(
            f"preset {name!r} has no colour variant {color!r}; choose one of "
            f"{', '.join(PRESET_COLORS[name])}"
        )
    if pixel_size_um is not None and not (0 < pixel_size_um < float("inf")):
        raise ConfigError(f"pixel size must be a number > 0, got {pixel_size_um}")
    if pixel_size_um is not None:  # (cells of thousands of px filled 22 GB; of < 1 px, none)
        from cellsynth.io.resample import pixel_scale

        pixel_scale(config.pixel_size_um, pixel_size_um)  # raises beyond 32x either way
    return replace(config, pixel_size_um=pixel_size_um or config.pixel_size_um,
                   color=color or config.color)
