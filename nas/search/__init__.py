"""Subnet search: NSGA-II over a search space's integer encoding."""

from nas.search.nsga import run_nsga2

__all__ = ["run_nsga2"]
