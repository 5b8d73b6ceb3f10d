"""Where trials run: Ray tasks and resources.

Build trials (prune, fine-tune, quantize, export, verify) are Ray tasks of one CPU each,
spread over every node. Latency trials need the target's *timing resource* as well: this
machine is ``timing:local``, a remote board ``board:<name>``; a node offers the resource when
it can time on that device (``ray start ... --resources '{"timing:local": 1}'``), and one unit
per device means two timings never share it. A timing task also takes a CPU, so on its node it
never overlaps a build.

``ray.init()`` without an address starts an embedded Ray on this machine (all its CPUs, plus
``timing:local`` and the boards given). With ``address`` it joins an existing cluster; the
address is checked with a plain TCP connect first so an unreachable one fails in seconds.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._deps import require
from ..errors import UsageError

__all__ = ["LOCAL_TIMING", "Cluster", "board_resource", "check_address", "require_ray",
           "timing_resource"]

LOCAL_TIMING = "timing:local"
#: Seconds the address check waits for a TCP connection.
CONNECT_TIMEOUT_S = 5.0


def require_ray() -> Any:
    """``import ray``, or :class:`~edgekit.errors.BackendMissingError` naming the extra."""
    return require("ray", backend="distributed search (Ray)", extra="distributed")


def board_resource(name: str) -> str:
    return f"board:{name}"


def timing_resource(remote: str | None) -> str:
    """The Ray resource a latency trial needs: ``timing:local``, or ``board:<host>`` for a
    remote device ``[user@]host[:port]``."""
    if not remote:
        return LOCAL_TIMING
    host = remote.rpartition("@")[2].partition(":")[0]
    return board_resource(host)


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse an unreachable ``HOST:PORT`` quickly (Ray itself would retry for a minute)."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"bad Ray address {address!r}",
                         hint="write it as HOST:PORT, the head node's GCS address that "
                         "`ray start --head` printed (e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise UsageError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}",
            hint="start it with `ray start --head --port PORT` on the head node and check "
            "the host and port (and firewalls); leave out --address to run on this machine "
            "alone") from None


@dataclass
class Cluster:
    """A connected Ray: submit build and timing tasks, wait for them."""

    address: str | None
    started_here: bool
    resources: dict[str, float] = field(default_factory=dict)
    owned: bool = True  # this driver connected (a Ray already initialised stays up)
    _remote: dict[Any, Any] = field(default_factory=dict)

    @classmethod
    def connect(cls, address: str | None = None, *, boards: Mapping[str, str] | None = None,
                num_cpus: int | None = None) -> Cluster:
        """Join the cluster at ``address``, or start an embedded one (``num_cpus`` default:
        this machine's) offering ``timing:local`` and ``board:<host>`` for each board."""
        ray = require_ray()
        owned = not ray.is_initialized()
        if not owned:
            started = False
        elif address:
            check_address(address)
            try:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR")
            except Exception as exc:  # refused, timed out, wrong auth token, version skew
                detail = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ""
                raise UsageError(f"cannot join the Ray cluster at {address}: "
                                 f"{type(exc).__name__}: {detail}",
                                 hint="check that `ray status --address "
                                 f"{address}` works from this machine (same Ray version; "
                                 "the cluster's auth token or RAY_AUTH_MODE)") from exc
            started = False
        else:
            resources = {LOCAL_TIMING: 1.0}
            for remote in (boards or {}).values():
                resources[timing_resource(remote)] = 1.0
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, resources=resources,
                     include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            started = True
        return cls(address=address, started_here=started, owned=owned,
                   resources=dict(ray.cluster_resources()))

    def check_resource(self, resource: str, target: str) -> None:
        """Refuse a target whose timing resource no node offers (its device is offline or was
        never declared), before any trial runs."""
        if self.resources.get(resource, 0) < 1:
            offered = sorted(k for k in self.resources
                             if k.startswith(("timing:", "board:")))
            raise UsageError(
                f"target {target}: no node of the Ray cluster offers the timing resource "
                f"{resource!r} (offered: {', '.join(offered) or 'none'}); its device is "
                "offline or not declared",
                hint=f"on the node that can time it: ray start --address HEAD:PORT "
                f"--resources '{{\"{resource}\": 1}}'")

    @property
    def cpus(self) -> int:
        return max(1, int(self.resources.get("CPU", 1)))

    def _task(self, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
        if fn not in self._remote:
            self._remote[fn] = require_ray().remote(fn)
        return self._remote[fn]

    def submit_build(self, fn: Callable[[dict[str, Any]], dict[str, Any]],
                     job: dict[str, Any]) -> Any:
        """``fn(job)`` as a one-CPU task on any node; a node lost mid-task makes Ray run it
        again elsewhere (``max_retries``)."""
        return self._task(fn).options(num_cpus=1, max_retries=3).remote(job)

    def submit_time(self, fn: Callable[[dict[str, Any]], dict[str, Any]], job: dict[str, Any],
                    resource: str) -> Any:
        """``fn(job)`` on the node holding ``resource`` (one unit: one timing per device),
        with a CPU so it never overlaps a build there."""
        return self._task(fn).options(num_cpus=1, resources={resource: 1},
                                      max_retries=3).remote(job)

    def wait(self, refs: list[Any], timeout: float | None = None) -> tuple[list[Any], list[Any]]:
        ray = require_ray()
        return ray.wait(refs, num_returns=1, timeout=timeout)

    def get(self, ref: Any) -> Any:
        ray = require_ray()
        return ray.get(ref)

    def close(self) -> None:
        """Disconnect this driver (an embedded Ray stops; a cluster keeps running; a Ray the
        caller had initialised is left as it was)."""
        if self.owned:
            require_ray().shutdown()
