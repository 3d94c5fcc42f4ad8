"""Recommenders assembled from ``micro_fast.nn`` modules."""

from micro_fast.models.micro import MICRO, MICROOutput

__all__ = ["MICRO", "MICROOutput"]
