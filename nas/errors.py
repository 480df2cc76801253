"""The project's own exceptions: each carries one line that names the problem for the user.

The CLI prints ``str(error)`` and exits with code 2 for any ``NasError``; anything else is a bug.
"""


class NasError(Exception):
    """Base of every error a user can cause (bad input, missing ids, unreachable services)."""


class SpecError(NasError):
    """The job spec is malformed or names something that does not exist."""


class StoreError(NasError):
    """The database cannot be reached or refused an operation."""


class NotFoundError(NasError):
    """A job, subnet or front asked for by id does not exist."""


class ClusterError(NasError):
    """The Ray cluster cannot be reached or a remote task failed."""


class InfeasibleError(NasError):
    """No subnet satisfies the job's constraints."""


class ConflictError(NasError):
    """The operation does not fit the job's state (cancelling a finished job)."""


class JobCancelled(NasError):
    """The job was cancelled while its controller ran; the controller stops at the next step."""
