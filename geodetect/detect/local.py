"""Blocks on this machine: reader processes (a torch DataLoader) feed the model here.

Each DataLoader item is one batch of one block's chips, read in a reader process;
batches come in whatever order readers finish them (one slow file holds up only its own
batch), and a block is finished (and committed) once all its batches are through the
model. Chips travel as numpy arrays through the pipe
(no shared-memory file descriptors), and a reader's failure comes back as its own
exception, raised here as one line.
"""

from __future__ import annotations

import bisect
import inspect
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from geodetect.detect.plan import Plan
from geodetect.detect.runner import (
    BlockAssembly,
    BlockResult,
    ChipData,
    ChipReader,
    Detector,
    batches,
)
from geodetect.errors import GeodetectError, RunError
from geodetect.geometry import Block
from geodetect.model.device import available_cpus

if TYPE_CHECKING:
    from geodetect.detect.prepare import PreparedRun

_HAS_IN_ORDER = "in_order" in inspect.signature(DataLoader).parameters  # torch >= 2.6
READER_TIMEOUT = 600  # seconds a reader process may take for one batch


@dataclass
class BatchItem:
    """One batch of one block, as a reader process hands it over."""

    position: int  # index of the block in the run's pending list
    chips: list[ChipData]
    error: BaseException | None = None


class BlockBatches(Dataset):
    """Item ``i``: the ``i``-th batch of the pending blocks, read (chips of one block only)."""

    def __init__(
        self,
        plan: Plan,
        blocks: Sequence[Block],
        counts: Sequence[int],
        reader: ChipReader,
        size: int,
    ) -> None:
        self.plan, self.blocks, self.reader, self.size = plan, list(blocks), reader, size
        self.batches = [math.ceil(n / size) for n in counts]
        self.starts = [0]
        for n in self.batches:
            self.starts.append(self.starts[-1] + n)
        self._cached: tuple[int, list] | None = None

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> BatchItem:
        position = bisect.bisect_right(self.starts, index) - 1
        j = index - self.starts[position]
        block = self.blocks[position]
        try:
            if self._cached is None or self._cached[0] != position:
                self._cached = (position, batches(self.plan, block, self.size))
            chips = self._cached[1][j]
            return BatchItem(position, [self.reader.read(block.grid, c) for c in chips])
        except GeodetectError as exc:
            return BatchItem(position, [], exc)
        except Exception as exc:  # noqa: BLE001 - one line in the main process, not torch's
            error = RunError(
                f"reading block {block.key} failed: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}"
            )
            return BatchItem(position, [], error)


def _as_is(item):
    return item


def _reader_init(_: int) -> None:
    torch.set_num_threads(1)  # readers decode; the main process owns the cores for compute
    # A reader whose run was killed (kill -9, the OOM killer) must not live on: its
    # batch may be stuck in a full pipe that nobody reads any more.
    parent = os.getppid()
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


@dataclass(frozen=True)
class InProcess:
    """The executor that runs the model in this process, fed by ``workers`` reader
    processes (None: CPUs - 1, at most 8; 0: read here too)."""

    workers: int | None = None

    def run(
        self, run: PreparedRun, blocks: Sequence[Block], counts: Sequence[int], sink: Any
    ) -> None:
        workers = self.workers
        if workers is None:
            workers = min(8, max(1, available_cpus() - 1))
        reader = ChipReader(
            run.plan.grids,
            skip_bad_chips=run.config.skip_bad_chips,
            crop_step=run.config.crop_step,
        )
        detector = Detector.build(run.loaded, run.plan.grids, run.config, run.device, run.scaling)
        run_local(
            run.plan,
            blocks,
            counts,
            reader,
            detector,
            workers=workers,
            on_block=sink.block,
            on_chips=sink.chips,
        )


def run_local(
    plan: Plan,
    blocks: Sequence[Block],
    counts: Sequence[int],
    reader: ChipReader,
    detector: Detector,
    *,
    workers: int,
    on_block: Callable[[BlockResult], None],
    on_chips: Callable[[int], None],
) -> None:
    """Run ``blocks`` (with ``counts`` chips each) with ``workers`` reader processes (0:
    read here), handing each finished block to ``on_block`` in plan order."""
    dataset = BlockBatches(plan, blocks, counts, reader, detector.config.batch_size)
    loader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_is,
        worker_init_fn=_reader_init if workers else None,
        prefetch_factor=4 if workers else None,
        # A reader that hands over nothing for this long is stuck, not slow: an error,
        # never an endless wait.
        timeout=READER_TIMEOUT if workers else 0,
        # fork starts readers at once and shares the plan without pickling; macOS's
        # system libraries are not fork-safe, so there (and on Windows) the default.
        multiprocessing_context="fork" if workers and sys.platform == "linux" else None,
        # A batch stuck on a slow file does not hold up the batches other readers have
        # ready; blocks are put together from whatever order their batches come in.
        **({"in_order": False} if workers and _HAS_IN_ORDER else {}),
    )
    pin = detector.device.type == "cuda"
    open_blocks: dict[int, BlockAssembly] = {}
    try:
        for item in loader:
            if item.error is not None:
                raise item.error
            assembly = open_blocks.get(item.position)
            if assembly is None:
                assembly = open_blocks[item.position] = BlockAssembly(
                    blocks[item.position].key,
                    counts[item.position],
                    dataset.batches[item.position],
                )
            assembly.add(item.chips, detector, pin=pin)
            on_chips(len(item.chips))
            if assembly.complete:  # the block's last batch is in
                del open_blocks[item.position]
                on_block(assembly.finish())
    except RuntimeError as exc:
        if "DataLoader timed out" in str(exc):
            raise RunError(
                f"a reader process handed over nothing for {READER_TIMEOUT} s (stuck on a "
                "file or a network share?); finished blocks are kept, so rerun the same "
                "command to continue (--workers 0 reads in the main process)"
            ) from None
        if "DataLoader worker" not in str(exc):
            raise
        raise RunError(
            f"a reader process died ({str(exc).splitlines()[0].rstrip('. ')}): out of memory "
            "or killed; finished blocks are kept, so rerun the same command to continue "
            "(fewer --workers or a smaller --batch-size use less memory)"
        ) from None
