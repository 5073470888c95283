"""Baselines scored beside the generative model: most-popular and SASRec."""

from onerec.baselines.popularity import item_popularity, popularity_order, popularity_rankings
from onerec.baselines.run import BASELINES, run_baselines
from onerec.baselines.sasrec import SASRec, SASRecConfig, load_sasrec, sasrec_rankings, train_sasrec

__all__ = [
    "BASELINES",
    "SASRec",
    "SASRecConfig",
    "item_popularity",
    "load_sasrec",
    "popularity_order",
    "popularity_rankings",
    "run_baselines",
    "sasrec_rankings",
    "train_sasrec",
]
