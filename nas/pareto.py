"""Non-dominated filtering of measured subnets, through pymoo's sorting."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting


def minimisation_matrix(rows: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """Objective values as a matrix to minimise: ``max`` columns are negated."""
    signs = np.array([-1.0 if d == "max" else 1.0 for d in directions])
    return np.asarray(rows, dtype=float).reshape(-1, len(directions)) * signs


def non_dominated(rows: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the rows no other row dominates, sorted by the last objective.

    Rows with identical objective values keep only their first occurrence, so a front never
    lists two subnets that a user could not tell apart.
    """
    if len(rows) == 0:
        return []
    matrix = minimisation_matrix(rows, directions)
    _, first = np.unique(matrix, axis=0, return_index=True)
    first = np.sort(first)
    front = NonDominatedSorting().do(matrix[first], only_non_dominated_front=True)
    chosen = first[front]
    return sorted(chosen.tolist(), key=lambda i: (matrix[i, -1], matrix[i, 0]))
