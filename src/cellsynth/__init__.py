"""cellsynth: synthetic training data for cell instance segmentation.

Four stages, each a subpackage: ``simulate`` (procedural cell images with exact labels),
``refine`` (SPADE refiner trained S+U on unlabeled real images), ``segment`` (CPN pretraining
and fine-tuning) and ``evaluate`` (instance and realism metrics). ``io`` reads and writes the
dataset folder layout that connects them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
