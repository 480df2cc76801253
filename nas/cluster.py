"""Connecting to Ray: a local instance by default, a running cluster by address.

A local instance binds to 127.0.0.1 and keeps its dashboard off. Ray's token authentication
stays on: Ray itself reads the token from ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token`` (and
writes one there when it starts a local instance).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from nas.errors import ClusterError


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Connect to the cluster at ``address`` (or start a local one) for the duration of a block."""
    if ray.is_initialized():  # a caller (a test session, a notebook) already connected
        yield
        return
    options = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(
                num_cpus=num_cpus or os.cpu_count(),
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                **options,
            )
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ClusterError(f"cannot connect to Ray at {address or 'a new local instance'}: {first}") from None
    try:
        yield
    finally:
        ray.shutdown()
