"""Blocks on Dask: a LocalCluster of worker processes, or an existing cluster.

The client sends the plan, run configuration and model once (broadcast to every
worker); each worker builds its reader and detector once per run and keeps them, runs
whole blocks (:func:`geodetect.detect.runner.run_block`) and returns their small tables
of owned detections, which the client commits to the journal as they arrive.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from geodetect.detect.plan import Plan, RunConfig
from geodetect.detect.runner import BlockResult, ChipReader, Detector, run_block
from geodetect.errors import InputError, RunError
from geodetect.geometry import Block

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Payload:
    """What every worker needs for one run (sent once per worker)."""

    run_id: str
    plan: Plan
    config: RunConfig
    model: Any  # a model file path (str) or a LoadedModel
    scaling: tuple
    device: str


_WORKER_RUNS: dict[str, tuple[ChipReader, Detector]] = {}


def _worker_side(payload: _Payload) -> tuple[ChipReader, Detector]:
    """This worker's reader and detector for the run, built on its first block."""
    if payload.run_id not in _WORKER_RUNS:
        from geodetect.model import LoadedModel, load_model, resolve_device

        device = resolve_device(payload.device)
        model = payload.model
        loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device)
        _WORKER_RUNS.clear()  # one run at a time per worker: free the previous model
        _WORKER_RUNS[payload.run_id] = (
            ChipReader(payload.plan.grids, skip_bad_chips=payload.config.skip_bad_chips),
            Detector.build(
                loaded, payload.plan.grids, payload.config, device, list(payload.scaling)
            ),
        )
    return _WORKER_RUNS[payload.run_id]


def _run_remote(payload: _Payload, block: Block) -> BlockResult:
    reader, detector = _worker_side(payload)
    return run_block(payload.plan, block, reader, detector)


@contextlib.contextmanager
def connect(cluster: Any) -> Iterator[Any]:
    """A ``dask.distributed.Client`` for ``cluster``: ``"local:N"`` starts a LocalCluster
    of N worker processes (one thread each) for the run; ``"tcp://HOST:PORT"`` (or any
    scheduler address) connects to a running cluster; a Client is used as it is."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise InputError(
            "--cluster needs dask.distributed; install it with `pip install 'dask[distributed]'`"
        ) from None
    if isinstance(cluster, Client):
        yield cluster
        return
    text = str(cluster)
    if text.startswith("local:") or text == "local":
        count = text.partition(":")[2] or "2"
        if not count.isdigit() or int(count) < 1:
            raise InputError(
                f"--cluster {text}: give local:N with N worker processes, e.g. local:4"
            )
        with (
            LocalCluster(
                n_workers=int(count),
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            ) as local,
            Client(local) as client,
        ):
            log.info(
                "Dask LocalCluster of %s worker(s); dashboard %s", count, client.dashboard_link
            )
            yield client
        return
    try:
        client = Client(text, timeout="20s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(
            f"--cluster {text}: cannot reach a Dask scheduler there ({exc}); start one with "
            "`dask scheduler` and workers with `dask worker ADDRESS`, or use local:N"
        ) from None
    with client:
        log.info("Dask cluster %s; dashboard %s", text, client.dashboard_link)
        yield client


def run_cluster(
    client: Any,
    plan: Plan,
    blocks: Sequence[Block],
    config: RunConfig,
    model: Any,
    scaling: Sequence,
    device: str,
    *,
    on_block: Callable[[BlockResult], None],
    on_chips: Callable[[int], None],
) -> None:
    """Submit ``blocks`` to the cluster; hand each result to ``on_block`` as it comes."""
    from dask.distributed import as_completed
    from distributed.client import FutureCancelledError

    try:
        from distributed.scheduler import KilledWorker
    except ImportError:  # older distributed
        from distributed import KilledWorker

    run_id = uuid.uuid4().hex
    payload = client.scatter(
        _Payload(run_id, plan, config, model, tuple(scaling), device), broadcast=True
    )
    futures = [
        client.submit(_run_remote, payload, block, key=f"geodetect-{run_id}-{block.key}")
        for block in blocks
    ]
    try:
        for future in as_completed(futures):
            result = future.result()
            on_chips(result.chips)
            on_block(result)
            future.release()
    except KilledWorker as exc:
        raise RunError(
            f"a Dask worker died running a block ({exc}): out of memory or killed; finished "
            "blocks are kept, so rerun the same command to continue"
        ) from None
    except FutureCancelledError:
        raise RunError(
            "the Dask cluster cancelled the run; rerun the same command to continue"
        ) from None
    finally:
        client.cancel(futures)
