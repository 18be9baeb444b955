"""What a user asks of a detection run, as one frozen value checked before anything is
read (:class:`DetectOptions`), and where its blocks run (:class:`ClusterSpec`).

Everything here is checked without opening a raster or loading a model, so a bad value
from the command line, the notebook API or a script fails in a second, not after the
expensive part. Values the model decides (threshold, NMS IoU, chip size, overlap) stay
None here and are settled by :func:`geodetect.detect.prepare.prepare`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from geodetect.errors import InputError
from geodetect.geometry import MERGE_METRICS
from geodetect.io.raster import parse_date
from geodetect.model.device import PRECISIONS

#: Chips per block side: 16 x 16 = 256 chips (about 67 Mpx at 512 px).
DEFAULT_BLOCK_CHIPS = 16
RUNTIMES = ("auto", "torch", "onnxruntime", "int8")
VIEW_COUNTS = (4, 8)
SCREEN_MODES = ("auto", "on", "off")
DEFAULT_LOCAL_WORKERS = 2


@dataclass(frozen=True)
class ClusterSpec:
    """Where blocks run on Dask: a LocalCluster of ``local_workers`` processes on this
    machine, a running cluster's scheduler ``address``, or a ``client`` to use as it is.
    """

    local_workers: int | None = None
    address: str | None = None
    client: Any = field(default=None, compare=False)

    @classmethod
    def parse(cls, value: Any) -> ClusterSpec | None:
        """``None``, ``"local"``, ``"local:N"``, a scheduler address (``tcp://HOST:PORT``)
        or a ``dask.distributed.Client``.

        Raises:
            InputError: ``local:`` without a whole number of workers >= 1.
        """
        if value is None or isinstance(value, ClusterSpec):
            return value
        if not isinstance(value, str):
            return cls(client=value)
        if value == "local" or value.startswith("local:"):
            count = value.partition(":")[2] or str(DEFAULT_LOCAL_WORKERS)
            if not count.isdigit() or int(count) < 1:
                raise InputError(
                    f"--cluster {value}: give local:N with N worker processes, e.g. local:4"
                )
            return cls(local_workers=int(count))
        if not value.strip():
            raise InputError("--cluster '': give local:N or a scheduler address")
        return cls(address=value)

    def __str__(self) -> str:
        if self.local_workers is not None:
            return f"local:{self.local_workers}"
        return self.address or "a Dask client"


@dataclass(frozen=True)
class DetectOptions:
    """Every option of a detection run (see :func:`geodetect.detect.detect` for what
    each does). None means "as the model says" or "as the machine suggests".

    Raises (when made):
        InputError: a value no run could use.
    """

    chip_size: int | None = None
    overlap: int | None = None
    threshold: float | None = None
    nms_iou: float | None = None
    merge_metric: str = "iou"
    tta_views: int = 0  # 0: no test-time augmentation; 4 (flips) or 8 (all symmetries)
    gsd: str | float = "model"
    crs: str | None = None
    bands: tuple[int, ...] | None = None
    batch_size: int | None = None
    block_size: int = DEFAULT_BLOCK_CHIPS
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    cluster: ClusterSpec | None = None
    allow_no_crs: bool = False
    skip_bad_chips: bool = False
    # Run the network only on the part of a chip that holds imagery (chips over the
    # edge of the data); False: whole chips, as before.
    crop: bool = True
    compile: bool = False
    runtime: str = "auto"
    # Skip chips where a look at 1/2 resolution finds nothing: auto (where a sample of
    # the run says it pays), on or off (see geodetect.detect.screen).
    screen: str = "auto"
    # The acquisition date (YYYY-MM-DD) written on every feature, over what the files'
    # metadata says; it changes no detection.
    date: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place while checking
        if self.chip_size is not None and (self.chip_size <= 0 or self.chip_size % 32):
            raise InputError(f"--chip-size {self.chip_size}: must be a multiple of 32")
        if self.overlap is not None and self.overlap < 0:
            raise InputError(f"--overlap {self.overlap}: must be 0 or more")
        if None not in (self.chip_size, self.overlap) and self.overlap >= self.chip_size:
            raise InputError(
                f"--overlap {self.overlap}: must be between 0 and chip size {self.chip_size}"
            )
        for name in ("threshold", "nms_iou"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and 0 <= value <= 1):
                raise InputError(f"--{name.replace('_', '-')} {value}: give a number in 0-1")
        if self.merge_metric not in MERGE_METRICS:
            raise InputError(
                f"--merge-metric {self.merge_metric}: choose one of {', '.join(MERGE_METRICS)}"
            )
        if self.tta_views not in (0, *VIEW_COUNTS):
            raise InputError(
                f"--tta-views {self.tta_views}: choose 4 (flips) or 8 (all symmetries)"
            )
        set_(self, "gsd", _parse_gsd(self.gsd))
        if self.bands is not None:
            bands = tuple(int(b) for b in self.bands)
            if not bands or min(bands) < 1:
                raise InputError(f"--bands {self.bands}: band numbers start at 1")
            set_(self, "bands", bands)
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size}: at least 1")
        if self.block_size < 1:
            raise InputError(f"--block-size {self.block_size}: at least 1 chip")
        if self.workers is not None and self.workers < 0:
            raise InputError(f"--workers {self.workers}: 0 or more")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision {self.precision}: choose one of {', '.join(PRECISIONS)}")
        if self.runtime not in RUNTIMES:
            raise InputError(f"--runtime {self.runtime}: choose one of {', '.join(RUNTIMES)}")
        if self.screen not in SCREEN_MODES:
            raise InputError(f"--screen {self.screen}: choose one of {', '.join(SCREEN_MODES)}")
        set_(self, "cluster", ClusterSpec.parse(self.cluster))
        if self.date is not None:
            text = str(self.date)
            if parse_date(text) != text:
                raise InputError(
                    f"--date {self.date}: give the date as YYYY-MM-DD, e.g. 2024-06-01"
                )
            set_(self, "date", text)


def _parse_gsd(gsd: Any) -> str | float:
    if gsd in ("model", "native"):
        return gsd
    try:
        value = float(gsd)
    except (TypeError, ValueError):
        raise InputError(
            f"--gsd {gsd}: choose 'model', 'native' or a pixel size in metres"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"--gsd {gsd}: a pixel size in metres must be above 0")
    return value
