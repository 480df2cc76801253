"""Connecting to Ray: a local instance by default, a running cluster by address.

A local instance runs without the dashboard UI; what remains of the dashboard process listens on
127.0.0.1 only. (Ray's own services advertise this machine's address: Ray deliberately turns
"127.0.0.1" into it so that other nodes could join.) Ray's token authentication
stays on: Ray itself reads the token from ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token`` (and
writes one there when it starts a local instance).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from nas.errors import ClusterError

#: How often a worker process that dies (killed, out of memory) is restarted and its task
#: retried before the job fails. Workers return results and only the controller stores them,
#: so a retried task is never counted twice.
WORKER_RETRIES = 3


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast on a ``host:port`` nobody listens on (Ray itself retries for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # "auto", "ray://..." and other forms are left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise ClusterError(f"cannot reach Ray cluster at {address}: {reason.lower()}") from None


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Connect to the cluster at ``address`` (or start a local one) for the duration of a block."""
    if ray.is_initialized():  # a caller (a test session, a notebook) already connected
        yield
        return
    options = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address:
            check_reachable(address)
            ray.init(address=address, **options)
        else:
            ray.init(
                address="local",  # a new instance even if `ray start` runs one on this host
                num_cpus=num_cpus or os.cpu_count(),
                include_dashboard=False,
                dashboard_host="127.0.0.1",
                **options,
            )
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ClusterError(
            f"cannot connect to Ray at {address or 'a new local instance'}: {first}"
        ) from None
    try:
        yield
    finally:
        ray.shutdown()
