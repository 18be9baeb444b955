"""The detection pipeline: files -> one target grid -> blocks of chips -> owned detections
-> journal -> merged layer.

A run is a chain of values (:mod:`geodetect.detect.run`), module by module:

- :mod:`geodetect.detect.options`: :class:`DetectOptions`, what the user asks, checked
  before anything is read (and :class:`ClusterSpec`, where blocks run);
- :mod:`geodetect.detect.prepare`: the inputs on their target grids
  (:mod:`geodetect.io.target`), the model's settings filled in (:class:`RunConfig`), the
  :class:`Plan` of blocks (:mod:`geodetect.detect.plan`) and the journal's manifest, as
  one :class:`PreparedRun`;
- :mod:`geodetect.detect.runner`: the block runner, a chip reader and a detector (chips
  in, owned detections out) and the one batch loop, used by the executors
  :mod:`geodetect.detect.local` (reader processes feed the model in this process) and
  :mod:`geodetect.detect.cluster` (Dask workers run whole blocks);
- :mod:`geodetect.detect.journal`: finished blocks on disk (or in memory) and the
  store's life over a run, so a rerun continues;
- :mod:`geodetect.detect.merge`: the store's tables -> seam merge -> layer.

Results do not depend on block size, worker count or the order blocks finish in.
"""

from geodetect.detect.merge import to_layer
from geodetect.detect.options import ClusterSpec, DetectOptions
from geodetect.detect.plan import (
    DEFAULT_BLOCK_CHIPS,
    Plan,
    RunConfig,
    default_chip_size,
    default_overlap,
    make_plan,
)
from geodetect.detect.prepare import PreparedRun, prepare
from geodetect.detect.run import DetectionReport, detect, execute, executor_for, publish
from geodetect.detect.runner import Normaliser
from geodetect.detect.tta import DIHEDRAL, FLIPS, View, predict_with_flips
from geodetect.io.target import GSD_TOLERANCE

__all__ = [
    "DEFAULT_BLOCK_CHIPS",
    "DIHEDRAL",
    "FLIPS",
    "GSD_TOLERANCE",
    "ClusterSpec",
    "DetectOptions",
    "DetectionReport",
    "Normaliser",
    "Plan",
    "PreparedRun",
    "RunConfig",
    "View",
    "default_chip_size",
    "default_overlap",
    "detect",
    "execute",
    "executor_for",
    "make_plan",
    "predict_with_flips",
    "prepare",
    "publish",
    "to_layer",
]
