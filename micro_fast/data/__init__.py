"""Datasets for MICRO-style recommenders: the two on-disk formats of the field, planted
synthetic data, and the BPR triple sampler.

    >>> from micro_fast.data import load, synthetic, BPRSampler
    >>> ds = synthetic("tiny", seed=0)            # or load("path/to/baby")
    >>> users, pos, neg = BPRSampler(ds.train, batch_size=256).sample()
"""

from micro_fast.data.dataset import Dataset
from micro_fast.data.formats import load, load_micro, load_mmrec, save_micro, save_mmrec
from micro_fast.data.sampler import BPRSampler
from micro_fast.data.synthetic import PRESETS, from_spec, parse_spec, synthetic

__all__ = ["PRESETS", "BPRSampler", "Dataset", "from_spec", "load", "load_micro", "load_mmrec",
           "parse_spec", "save_micro", "save_mmrec", "synthetic"]
