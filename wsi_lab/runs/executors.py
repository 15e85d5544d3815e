"""Executors: where a run's tasks execute. Today: Dask (a LocalCluster by default, a given
``distributed.Client``, or a scheduler address); the training issue adds local / torchrun / horovod and
the SageMaker issue adds sagemaker beside it, all returning a :class:`~wsi_lab.runs.job.Job`.

Scheduler addresses are normalised (:func:`normalize_scheduler_address`: ``host:port`` →
``tcp://host:port``; ``:``, ``tcp://`` and the like are refused) and checked up front
(:func:`check_scheduler_reachable`: a TCP connect with a short, stated timeout), so a wrong address
fails in seconds with "cannot reach tcp://host:port within 5 s" instead of a 20 s wait and an
"Unexpected OSError". Dask is imported only inside :func:`dask_client`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import warnings
from collections.abc import Iterator
from typing import Any

from wsi_lab.errors import InvalidParameterError, WSILabError

log = logging.getLogger(__name__)

__all__ = ["normalize_scheduler_address", "check_scheduler_reachable", "dask_client", "check_workers",
           "SchedulerUnreachableError", "DEFAULT_SCHEDULER_PORT", "CONNECT_TIMEOUT_S", "TooManyWorkersWarning",
           "LOCAL_CLUSTER_CONFIG", "local_cluster"]

DEFAULT_SCHEDULER_PORT = 8786
#: seconds a scheduler address gets to accept a TCP connection before the run is refused
CONNECT_TIMEOUT_S = 5.0
_SCHEMES = ("tcp", "tls")


#: Dask settings of the LocalCluster this module starts: its background chores sampled less often, so that
#: on a machine of a few cores they do not take CPU from the tasks (issue 15: with Dask's defaults the
#: scheduler, nannies and workers used ~0.2 ms of CPU per 1 ms tile task). The statistical profiler (the
#: dashboard's Profile page; a stack walk every 10 ms per worker) is off; the system monitor, the event
#: loop tick and the memory monitor (which still pauses/terminates workers past their limits: peak RSS
#: stays bounded) run less often. Only clusters started here get them; a given Client is used as is.
LOCAL_CLUSTER_CONFIG: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.admin.tick.interval": "200ms",
    "distributed.worker.memory.monitor-interval": "500ms",
}


def local_cluster(n_workers: int, **kwargs: Any) -> Any:
    """A LocalCluster of ``n_workers`` single-threaded worker processes (each under a nanny, which
    restarts a killed worker) on 127.0.0.1 with :data:`LOCAL_CLUSTER_CONFIG`; ``kwargs`` go to
    ``LocalCluster``."""
    import dask
    from distributed import LocalCluster

    with dask.config.set(LOCAL_CLUSTER_CONFIG):  # the nannies pass the config on to their worker processes
        return LocalCluster(**{"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                               "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", **kwargs})


class SchedulerUnreachableError(WSILabError, ConnectionError):
    """Nothing answers at the Dask scheduler address (refused, timed out, unknown host)."""


class TooManyWorkersWarning(UserWarning):
    """More worker processes than CPU cores were asked for."""


def _split_host_port(rest: str, original: str) -> tuple[str, int]:
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d*))?", rest) or re.fullmatch(r"([A-Za-z0-9._-]*)(?::(\d*))?", rest)
    if m is None:
        raise InvalidParameterError(f"scheduler address {original!r} is not host:port; type one like "
                                    f"tcp://127.0.0.1:{DEFAULT_SCHEDULER_PORT}")
    host, port_s = m.group(1), m.group(2)
    if not host:
        raise InvalidParameterError(f"scheduler address {original!r} has no host; type one like "
                                    f"tcp://127.0.0.1:{DEFAULT_SCHEDULER_PORT}")
    if port_s is None:
        return host, DEFAULT_SCHEDULER_PORT
    if not port_s or not 1 <= int(port_s) <= 65535:
        raise InvalidParameterError(f"scheduler address {original!r}: the port must be a number in 1..65535")
    return host, int(port_s)


def normalize_scheduler_address(address: str) -> str:
    """``host``, ``host:port`` or ``tcp://host:port`` → ``tcp://host:port`` (default port 8786).
    Raises ``InvalidParameterError`` naming the address when it has no host, a bad port or an unknown
    scheme (``:``, ``tcp://``, ``http://x``)."""
    if not isinstance(address, str) or not address.strip():
        raise InvalidParameterError(f"scheduler address {address!r} is empty; type one like "
                                    f"tcp://127.0.0.1:{DEFAULT_SCHEDULER_PORT}")
    addr = address.strip()
    scheme = "tcp"
    if "://" in addr:
        scheme, rest = addr.split("://", 1)
        scheme = scheme.lower()
        if scheme not in _SCHEMES:
            raise InvalidParameterError(f"scheduler address {address!r}: scheme {scheme!r} is not a Dask "
                                        f"protocol; use tcp:// (or tls://)")
    else:
        rest = addr
    host, port = _split_host_port(rest.rstrip("/"), address)
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def check_scheduler_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> str:
    """Normalise ``address`` and open (then close) a TCP connection to it within ``timeout`` s.
    Returns the normalised address; raises :class:`SchedulerUnreachableError` ("cannot reach
    tcp://host:port within 5 s: connection refused") otherwise. A refused connection fails at once."""
    addr = normalize_scheduler_address(address)
    rest = addr.split("://", 1)[1]
    host, port = _split_host_port(rest, addr)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return addr
    except ConnectionRefusedError as exc:
        why = "connection refused (is the scheduler running?)"
        err: BaseException = exc
    except TimeoutError as exc:
        why = "no answer"
        err = exc
    except socket.gaierror as exc:
        why = f"unknown host {host!r}"
        err = exc
    except OSError as exc:
        why = exc.strerror or str(exc)
        err = exc
    raise SchedulerUnreachableError(f"cannot reach {addr} within {timeout:g} s: {why}") from err


def check_workers(n_workers: int | None) -> int:
    """The worker count to use (default: one per core); a count above the core count is allowed but
    warns (:class:`TooManyWorkersWarning`): the processes then compete for the cores."""
    cores = os.cpu_count() or 1
    if n_workers is None:
        return cores
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise InvalidParameterError(f"n_workers must be a positive integer, got {n_workers!r}")
    if n_workers > cores:
        warnings.warn(f"{n_workers} Dask workers on {cores} CPU core(s): they will compete for the cores; "
                      f"use at most {cores}", TooManyWorkersWarning, stacklevel=3)
    return n_workers


@contextlib.contextmanager
def dask_client(client: Any = None, n_workers: int | None = None,
                connect_timeout: float = CONNECT_TIMEOUT_S) -> Iterator[Any]:
    """A ``distributed.Client`` for the duration of the ``with`` block.

    ``client`` None: a :func:`local_cluster` of ``n_workers`` single-threaded processes (one per core by
    default), dashboard on 127.0.0.1, closed at the end. A string: a scheduler address, checked with
    :func:`check_scheduler_reachable` first, the connection closed at the end. A Client: used as is
    (left open)."""
    from distributed import Client

    if client is None:
        n = check_workers(n_workers)
        cluster = local_cluster(n, silence_logs=logging.WARNING)
        try:
            c = Client(cluster)
        except BaseException:
            cluster.close()
            raise
        try:
            yield c
        finally:
            c.close()
            cluster.close()
        return
    if isinstance(client, str):
        addr = check_scheduler_reachable(client, connect_timeout)
        try:
            c = Client(addr, timeout=f"{max(connect_timeout, 1):g}s")
        except OSError as exc:
            raise SchedulerUnreachableError(f"cannot reach {addr} within {connect_timeout:g} s: {exc}") from exc
        try:
            yield c
        finally:
            c.close()
        return
    yield client
