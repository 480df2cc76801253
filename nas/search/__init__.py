"""Subnet search: NSGA-II over a search space's integer encoding, measuring every candidate
(``run_nsga2``) or guided by predictors (``run_predictive_search``)."""

from nas.search.nsga import run_nsga2
from nas.search.predictive import Iteration, hypervolume, run_predictive_search

__all__ = ["Iteration", "hypervolume", "run_nsga2", "run_predictive_search"]
