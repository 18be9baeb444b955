"""Blocks on Dask: a LocalCluster of worker processes, or an existing cluster.

The client sends the plan, run configuration and model once (broadcast to every
worker); each worker builds its reader and detector once per run and keeps them, runs
whole blocks (:func:`geodetect.detect.runner.run_block`) and returns their small tables
of owned detections, which the client commits to the journal as they arrive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geodetect.detect.options import ClusterSpec
from geodetect.detect.plan import Plan, RunConfig
from geodetect.detect.runner import BlockResult, ChipReader, Detector, run_block
from geodetect.errors import GeodetectError, InputError, RunError
from geodetect.geometry import Block
from geodetect.io.raster import configure_gdal
from geodetect.io.remote import NetworkEnv
from geodetect.model import file_id
from geodetect.model.device import available_cpus

if TYPE_CHECKING:
    from geodetect.detect.prepare import PreparedRun

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Payload:
    """What every worker needs for one run (sent once per worker)."""

    run_id: str
    plan: Plan
    config: RunConfig
    model: Any  # a model file path (str, absolute) or a LoadedModel
    model_id: str
    scaling: tuple
    device: str
    torch_threads: int | None  # None: the worker's thread count
    # The client's credentials and GDAL settings for remote imagery (a worker started
    # elsewhere has its own environment).
    network: NetworkEnv


class _WorkerRun:
    """A worker's share of one run: the model, loaded once and run by one thread at a
    time, and a chip reader per thread (GDAL handles are not shared across threads)."""

    def __init__(self, payload: _Payload) -> None:
        import torch

        from geodetect.errors import ModelFileError
        from geodetect.model import LoadedModel, file_id, load_model, resolve_device

        device = resolve_device(payload.device)
        model = payload.model
        if isinstance(model, LoadedModel):
            loaded = model
        else:
            if file_id(model) != payload.model_id:
                raise ModelFileError(
                    f"{model}: is not the model the run started with on this worker "
                    "(another version of the file?); give every worker the same file"
                )
            loaded = load_model(model, device=device)
        threads = payload.torch_threads or _worker_threads()
        torch.set_num_threads(max(1, threads))
        payload.network.apply()
        configure_gdal()
        self.payload = payload
        self.detector = Detector.build(
            loaded, payload.plan.grids, payload.config, device, list(payload.scaling)
        )
        self.model_lock = threading.Lock()
        self.local = threading.local()

    def reader(self) -> ChipReader:
        if not hasattr(self.local, "reader"):
            self.local.reader = ChipReader(
                self.payload.plan.grids,
                skip_bad_chips=self.payload.config.skip_bad_chips,
                crop_step=self.payload.config.crop_step,
            )
        return self.local.reader

    def run(self, block: Block) -> BlockResult:
        config = self.payload.config
        return run_block(self.payload.plan, block, self.reader(), self._detect, config.batch_size)

    def _detect(self, chips, batch):
        with self.model_lock:
            return self.detector(chips, batch)


def _worker_threads() -> int:
    try:
        from dask.distributed import get_worker

        return get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return 1


_RUNS: dict[str, _WorkerRun] = {}
_RUNS_LOCK = threading.Lock()


def _run_remote(payload: _Payload, block: Block) -> BlockResult:
    with _RUNS_LOCK:  # the first block of a run builds it; the others wait for it
        run = _RUNS.get(payload.run_id)
        if run is None:
            _RUNS.clear()  # one run at a time per worker: free the previous model
            run = _RUNS[payload.run_id] = _WorkerRun(payload)
    try:
        return run.run(block)
    except GeodetectError as exc:
        # The same error without its chain: GDAL's own exceptions in it do not survive
        # pickling, and the client must get a GeodetectError it can say in one line.
        error = type(exc)(*exc.args)
    raise error


def _forget(run_id: str) -> None:
    """Drop a finished run's model and open files from this worker."""
    with _RUNS_LOCK:
        _RUNS.pop(run_id, None)


@dataclass(frozen=True)
class OnDask:
    """The executor that runs whole blocks on Dask workers (each loads the model once)."""

    cluster: ClusterSpec

    def run(
        self, run: PreparedRun, blocks: Sequence[Block], counts: Sequence[int], sink: Any
    ) -> None:
        loaded = run.loaded
        source = str(loaded.path) if loaded.path.is_file() else loaded
        local = self.cluster.local_workers
        # A LocalCluster's workers share this machine's cores.
        threads = None if local is None else max(1, available_cpus() // local)
        with connect(self.cluster) as client:
            run_cluster(
                client,
                run.plan,
                blocks,
                run.config,
                source,
                run.scaling,
                run.device.type,
                torch_threads=threads,
                on_block=sink.block,
                on_chips=sink.chips,
            )


@contextlib.contextmanager
def _environ_kept(dask) -> Iterator[None]:
    """Give back this process's environment as it was once a LocalCluster is over.

    A Dask nanny sets its ``pre-spawn-environ`` (``OMP_NUM_THREADS=1`` and the like) in
    the *parent's* ``os.environ`` before it starts a worker, and leaves it there: every
    process started afterwards (a notebook's later commands, training's loader workers)
    would run torch on one thread."""
    keys = set(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    keys |= {"PYTHONHASHSEED"}
    saved = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def connect(cluster: ClusterSpec | str | Any) -> Iterator[Any]:
    """A ``dask.distributed.Client`` for ``cluster`` (a :class:`ClusterSpec` or what
    :meth:`ClusterSpec.parse` takes): ``local:N`` starts a LocalCluster of N worker
    processes (one thread each) for the run; a scheduler address (``tcp://HOST:PORT``)
    connects to a running cluster; a Client is used as it is."""
    try:
        import dask
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise InputError(
            "--cluster needs dask.distributed; install it with `pip install 'dask[distributed]'`"
        ) from None
    spec = ClusterSpec.parse(cluster)
    if spec.client is not None:
        yield spec.client
        return
    text = str(spec)
    if spec.local_workers is not None:
        count = spec.local_workers
        # A block that kills its worker (memory) is retried once, not on every worker.
        with (
            _environ_kept(dask),
            dask.config.set({"distributed.scheduler.allowed-failures": 1}),
            LocalCluster(
                n_workers=count,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.CRITICAL,  # errors reach the user in one line
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
    torch_threads: int | None = None,
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
    try:
        client.wait_for_workers(1, timeout=60)
    except TimeoutError:
        raise RunError(
            "the Dask cluster has no workers (none joined within 60 s); start some with "
            "`dask worker SCHEDULER_ADDRESS`"
        ) from None
    if isinstance(model, str | Path):
        model_id = file_id(model)
        model = str(Path(model).resolve())
    else:
        model_id = model.model_id
    payload = client.scatter(
        _Payload(
            run_id,
            plan,
            config,
            model,
            model_id,
            tuple(scaling),
            device,
            torch_threads,
            NetworkEnv.here(),
        ),
        broadcast=True,
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
    except GeodetectError:
        raise
    except KilledWorker as exc:
        raise RunError(
            f"a Dask worker died running a block ({exc}): out of memory or killed; finished "
            "blocks are kept, so rerun the same command to continue"
        ) from None
    except FutureCancelledError:
        raise RunError(
            "a Dask worker was lost mid-run (killed, or out of memory) with the run's data, "
            "so its blocks were cancelled; finished blocks are kept, so rerun the same "
            "command to continue"
        ) from None
    except Exception as exc:  # noqa: BLE001 - whatever a worker raised, in one line
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise RunError(
            f"a block failed on a Dask worker ({type(exc).__name__}: {text}); finished "
            "blocks are kept, so rerun the same command to continue"
        ) from None
    finally:
        client.cancel(futures)
        with contextlib.suppress(Exception):  # workers that are gone have nothing to free
            client.run(_forget, run_id)
