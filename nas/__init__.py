"""Neural architecture search service: supernets, predictors, NSGA-II search, a trial store."""

__version__ = "0.1.0"
