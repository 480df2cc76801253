"""Subnet search: NSGA-II over a search space's integer encoding, measuring every candidate
(``run_nsga2``) or guided by predictors (``run_predictive_search``, one ``PredictiveStep`` per
iteration), and the same predictor-guided search as an Optuna sampler
(``PredictorGuidedSampler``)."""

from nas.search.engine import PredictiveStep, Proposal, size_spread_design, size_spread_sample
from nas.search.nsga import run_nsga2
from nas.search.predictive import Iteration, hypervolume, run_predictive_search
from nas.search.sampler import PredictorGuidedSampler

__all__ = [
    "Iteration",
    "PredictiveStep",
    "PredictorGuidedSampler",
    "Proposal",
    "hypervolume",
    "run_nsga2",
    "run_predictive_search",
    "size_spread_design",
    "size_spread_sample",
]
