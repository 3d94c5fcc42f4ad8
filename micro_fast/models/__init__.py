"""Recommenders assembled from ``micro_fast.nn`` modules and ``micro_fast.ops``."""

from micro_fast.models.freedom import FREEDOM
from micro_fast.models.lattice import LATTICE
from micro_fast.models.micro import MICRO, MICROOutput

__all__ = ["FREEDOM", "LATTICE", "MICRO", "MICROOutput"]
