"""Data shipped with the package: the demo's fluorescence images (CC0, see demo_fluo/SOURCE.md)."""

from pathlib import Path

DEMO_FLUO = Path(__file__).parent / "demo_fluo"

__all__ = ["DEMO_FLUO"]
