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

import torch
from torch.utils.data import DataLoader, Dataset

from geodetect.detect.merge import concat_tables, empty_table
from geodetect.detect.plan import Plan
from geodetect.detect.runner import BlockResult, ChipData, ChipReader, Detector, stack, tally
from geodetect.errors import GeodetectError, RunError
from geodetect.geometry import Block

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
                self._cached = (position, self.plan.chips(block))
            chips = self._cached[1][j * self.size : (j + 1) * self.size]
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
    open_blocks: dict[int, tuple[BlockResult, list]] = {}
    try:
        for item in loader:
            if item.error is not None:
                raise item.error
            block = blocks[item.position]
            result, tables = open_blocks.setdefault(
                item.position, (BlockResult(block.key, empty_table(), counts[item.position]), [])
            )
            tables.append(None)  # one entry per batch received, detections or not
            tally(result, item.chips)
            full = [c for c in item.chips if c.data is not None]
            if full:
                batch = stack(full)
                tables[-1] = detector(full, batch.pin_memory() if pin else batch)
            on_chips(len(item.chips))
            if len(tables) == dataset.batches[item.position]:  # the block's last batch in
                result.table = concat_tables(t for t in tables if t is not None)
                del open_blocks[item.position]
                on_block(result)
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
