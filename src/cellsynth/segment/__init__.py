"""Stages 3 and 4: train a Contour Proposal Network (celldetection) on synthetic data,
fine-tune it on a few real images, and predict instance labels on images of any size.

Only ``cpn.py`` imports celldetection; import this package's modules lazily (torch is heavy).
"""

__all__: list[str] = []
