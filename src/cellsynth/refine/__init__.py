"""Stage 2: a SPADE refiner that makes simulated images realistic while keeping their labels.

Trained S+U style (Shrivastava et al. 2017) on simulated (image, labels) pairs and UNLABELED
real images: a multi-scale PatchGAN hinge loss pulls refined crops towards real ones, an L1
self-regularisation keeps them close to the simulation, and SPADE (Park et al. 2019) feeds
the label layout into every block.

>>> from cellsynth import refine
>>> refine.fit(refine.RefineConfig(steps=2000), "sim", "real", "run")      # doctest: +SKIP
>>> refine.refine_dataset("run", "sim_test", "refined", batch=8)           # doctest: +SKIP
"""

from cellsynth.refine.config import RefineConfig, refine_config
from cellsynth.refine.fidelity import FidelityResult, dataset_fidelity, label_fidelity
from cellsynth.refine.fit import fit
from cellsynth.refine.generate import Refiner, load_refiner, refine_dataset, refine_images
from cellsynth.refine.spade import SPADEGenerator, semantic_map

__all__ = [
    "FidelityResult", "RefineConfig", "Refiner", "SPADEGenerator", "dataset_fidelity", "fit",
    "label_fidelity", "load_refiner", "refine_config", "refine_dataset", "refine_images",
    "semantic_map",
]
