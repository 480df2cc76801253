"""The HTTP API and web page of ``nas serve``: jobs, Pareto fronts, curves and exports."""

from nas.service.app import create_app

__all__ = ["create_app"]
