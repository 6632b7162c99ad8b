"""Which simulator preset is closest to a user's images (fluorescence, Merker, H&E, Nissl),
guessed from their colour statistics with its evidence, and how many separate channels an
image has: what ``cellsynth init`` reads from the images before it writes a config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellsynth.errors import DatasetError

__all__ = ["PRESETS", "StainGuess", "channel_count", "guess_stain", "stain_mismatch"]

PRESETS = ("merker", "nissl", "he", "fluo")
N_GUESS = 8          # images the stain is guessed from
DARK_BACKGROUND = 0.35  # median of the normalised image below this: fluorescence
EOSIN_BACKGROUND = 0.10  # red minus green of the pale pixels above this: H&E's pink
NISSL_NUCLEI = -0.40     # red minus blue of the darkest pixels below this: Nissl's violet


@dataclass(frozen=True)
class StainGuess:
    preset: str
    reason: str
    n_images: int


def _features(image: np.ndarray, where: str | None = None) -> dict[str, float]:
    """Colour statistics of one image normalised by its content (1st-99.8th percentile);
    ``where`` names it in a warning (a constant image)."""
    from cellsynth.io.normalize import normalize

    x = normalize(image, where=where)
    if x.ndim == 3 and x.shape[-1] >= 3:
        x = x[..., :3]
        color = float(np.abs(x[..., 0] - x[..., 2]).mean()) > 0.02
    else:
        color = False
    luminance = x.mean(-1) if x.ndim == 3 else x
    features = {"color": float(color), "median": float(np.median(luminance))}
    if color:
        # (>= and <=: where over 40 % of the pixels are white glass, > the 60th percentile
        # chose none, and the mean of nothing was a NaN feature and two numpy warnings)
        pale = luminance >= np.percentile(luminance, 60)
        dark = luminance <= np.percentile(luminance, 10)
        features["pale_red_green"] = float((x[..., 0] - x[..., 1])[pale].mean())
        features["dark_red_blue"] = float((x[..., 0] - x[..., 2])[dark].mean())
    return features


def _vote(f: dict[str, float]) -> str:
    if f["median"] < DARK_BACKGROUND:
        return "fluo"
    if not f["color"]:
        return "merker"
    if f["pale_red_green"] > EOSIN_BACKGROUND or f["dark_red_blue"] > NISSL_NUCLEI:
        return "he"
    return "nissl"


_REASONS = {
    "fluo": "dark background, bright objects (fluorescence)",
    "merker": "gray, dark cells on a bright background (Merker / silver, BigBrain-like)",
    "he": "RGB with a pink (eosin) background or purple (hematoxylin) nuclei",
    "nissl": "RGB, blue-violet cells on a pale background (Nissl / cresyl violet)",
}


def guess_stain(images: list[Path], channel: int | None = None) -> StainGuess:
    """The preset closest to ``images`` (up to :data:`N_GUESS` of them, evenly spread; a
    whole section contributes one window of its tissue) by majority vote, with its reason;
    ``channel``: of that channel of multi-channel images."""
    from collections import Counter

    from cellsynth.io.sections import image_or_windows

    if not images:
        raise DatasetError("no images to guess the stain from")
    picked = [images[i] for i in np.unique(np.linspace(0, len(images) - 1, N_GUESS).round()
                                           .astype(int))]
    votes: Counter[str] = Counter()
    for path in picked:
        for window in image_or_windows(path, side=1024, n=1, channel=channel):
            votes[_vote(_features(np.asarray(window), where=str(path)))] += 1
    preset, count = votes.most_common(1)[0]
    total = sum(votes.values())
    others = ", ".join(f"{k} {v}" for k, v in votes.most_common() if k != preset)
    reason = (f"{_REASONS[preset]}: {count} of {total} image(s)"
              + (f"; others: {others}" if others else ""))
    return StainGuess(preset, reason, total)


def stain_mismatch(color: str, images: list[np.ndarray], name: str = "the preset",
                   names: list[str] | None = None) -> str | None:
    """What is wrong with simulating ``images`` in the colour model ``color`` (a preset's:
    gray, violet, he, fluo), or None: said where most of the images vote for fluorescence
    and the model is a bright-field one or the other way round, or where they are colour
    and the model has one channel; ``name`` names the model in the sentence. Nissl against
    H&E is not judged (their votes are close). ``names`` (the images' files) name an
    image in a warning (a constant one)."""
    if not images:
        return None
    votes = [_vote(_features(np.asarray(image), where=names[i] if names else None))
             for i, image in enumerate(images)]
    guess = max(set(votes), key=votes.count)
    n = votes.count(guess)
    said = f"{n} of {len(votes)} look {_REASONS[guess].split(':')[0]}"
    fits = f"; preset {guess!r} fits them"
    if color == "fluo" and guess != "fluo":
        return f"{said}, but {name} simulates bright nuclei on a dark background{fits}"
    if color != "fluo" and guess == "fluo":
        return f"{said}, but {name} simulates dark cells on a bright background{fits}"
    if color in ("gray", "fluo") and guess in ("he", "nissl"):
        return f"{said}, but {name} has one channel (their luminance is fitted){fits}"
    return None


def channel_count(path: Path) -> int:
    """How many separate channels the image at ``path`` has: 1 for gray and for colour
    (RGB) images, else as many as it stores (2 fluorescence channels, a TIFF's 3 markers).
    From the header where it says (nothing decoded), else from the image opened."""
    from cellsynth.io.headers import check_header
    from cellsynth.io.images import is_colour
    from cellsynth.io.sections import open_image

    count = check_header(path) if path.is_file() else None
    if count is None:
        image = open_image(path, all_channels=True)
        count = int(image.shape[2]) if len(image.shape) == 3 else 1
    return 1 if count == 3 and is_colour(path) else count
