"""What a user asks of a training run, as one frozen value checked before anything is
read or built (:class:`TrainOptions`), with its two parts that carry a policy: how long
it trains (:class:`Length`) and what its weights start from (:class:`Start`).

``geodetect train`` and the notebook API (:func:`geodetect.prepare_data`,
:class:`geodetect.RetinaNet` and its ``fit``) build the same value, so a bad value fails
in a second from either, not after the labels are read, a synthetic start is built or
a learning-rate sweep has run. Values the data decide (chip size, GSD, batch size,
workers, learning rate) stay None here and are settled by the training run
(:mod:`geodetect.train.run`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geodetect.errors import InputError, OutputError
from geodetect.model.device import PRECISIONS
from geodetect.model.file import read_spec
from geodetect.model.spec import BACKBONES, BOX_LOSSES, PRESETS

if TYPE_CHECKING:
    from geodetect.train.augment import Augmentation

#: Peak learning rate of the one-cycle schedule when none is given or found.
DEFAULT_LR = 2e-3
#: :func:`~geodetect.train.fit.fit`'s own planned epochs; a training run without a
#: length takes :data:`DEFAULT_STEPS` steps.
DEFAULT_EPOCHS = 60
#: A training run given no length (no epochs, steps or minutes) takes this many steps:
#: about 30 minutes on a 2-core CPU (7,749 steps in 30 minutes on an Intel Xeon), a few on
#: a GPU. On real 0.2 m orthophotos (benchmarks/README.md, real.py) 30 minutes gave AP50
#: 0.843, AP75 0.731, F1 0.846 where 8 minutes gave 0.789, 0.617, 0.824.
DEFAULT_STEPS = 8000

#: What a new model starts from: ``synthetic`` (the default), ``imagenet`` (torchvision's
#: backbone weights, which must be in torch's cache) or ``none`` (random weights).
STARTS = ("synthetic", "imagenet", "none")


def check_start(start: str) -> str:
    """``start`` as a name in :data:`STARTS` (``auto`` is ``synthetic``).

    Raises:
        InputError: an unknown name.
    """
    start = "synthetic" if start == "auto" else start
    if start not in STARTS:
        raise InputError(f"unknown start {start!r}; choose one of {', '.join(STARTS)}")
    return start


@dataclass(frozen=True)
class Length:
    """How long a run trains: planned ``epochs`` or ``steps`` (not both) and a wall-clock
    budget ``max_minutes``, either or both. Given none, :data:`DEFAULT_STEPS` steps (the
    same model on any machine). :meth:`of` is the one place this policy lives."""

    epochs: int | None = None
    steps: int | None = None
    max_minutes: float | None = None

    #: Planned epochs when the budget alone sets the length (it ends the run first).
    BUDGET_EPOCHS = 10_000

    @classmethod
    def of(
        cls,
        epochs: int | None = None,
        steps: int | None = None,
        max_minutes: float | None = None,
    ) -> Length:
        """The length asked for, with the default filled in.

        Raises:
            InputError: both ``epochs`` and ``steps``, or a value that is not positive.
        """
        if steps is not None and epochs is not None:
            raise InputError("give --steps or --epochs, not both")
        for name, value in (("--epochs", epochs), ("--steps", steps)):
            if value is not None and (int(value) != value or value < 1):
                raise InputError(f"{name} {value}: give a whole number of at least 1")
        if max_minutes is not None and not max_minutes > 0:
            raise InputError(f"--max-minutes {max_minutes}: give a number of minutes above 0")
        if epochs is None and steps is None and max_minutes is None:
            steps = DEFAULT_STEPS  # read now: tests and benchmarks set it
        return cls(epochs, steps, max_minutes)

    @property
    def planned_epochs(self) -> int:
        """The ``epochs`` :func:`~geodetect.train.fit.fit` plans with (it counts
        ``steps`` instead when they are given)."""
        if self.epochs is not None:
            return self.epochs
        return self.BUDGET_EPOCHS if self.max_minutes is not None else DEFAULT_EPOCHS


@dataclass(frozen=True)
class Start:
    """What a model's weights start from.

    Attributes:
        kind: ``synthetic``, ``imagenet`` or ``none`` for a new model (see
            :data:`STARTS`); ``model`` for a new model initialised from the weights of
            ``path`` (``--init``); ``resume`` to continue the model in ``path``, its
            architecture, classes, chip size, GSD and band scaling kept.
        path: the model file of ``model`` and ``resume``.
    """

    kind: str = "synthetic"
    path: Path | None = None

    @classmethod
    def of(
        cls,
        start: str = "synthetic",
        *,
        init: str | os.PathLike[str] | None = None,
        resume: str | os.PathLike[str] | None = None,
    ) -> Start:
        """The start of ``--start``, ``--init`` and ``--resume`` (``init`` and ``resume``
        take the place of ``start``).

        Raises:
            InputError: both ``init`` and ``resume``, or an unknown ``start``.
            ModelFileError: the model file is missing or not a geodetect model.
        """
        if resume is not None and init is not None:
            raise InputError(
                "--resume continues a model and --init starts a new one from its weights; "
                "give one of them"
            )
        start = check_start(start)
        for value in (resume, init):
            if value is not None:
                read_spec(value)  # its header only: missing, damaged or foreign files
        if resume is not None:
            return cls("resume", Path(resume))
        if init is not None:
            return cls("model", Path(init))
        return cls(start)

    @property
    def resumes(self) -> bool:
        return self.kind == "resume"


@dataclass(frozen=True)
class TrainOptions:
    """Every option of a training run (see :func:`geodetect.train.train` for what each
    does). None means "as the data or the machine suggest".

    Make one with :meth:`of` (the command line's option names) or change one with
    :meth:`but`; either checks the whole value again.

    Raises (when made):
        InputError: a value no run could use.
        OutputError: ``out`` exists (without ``overwrite``) or its folder does not.
    """

    backbone: str = "resnet18"
    preset: str = "lite"
    box_loss: str | None = None
    anchor_scales: tuple[float, ...] | None = None
    anchor_ratios: tuple[float, ...] | None = None
    chip_size: int | None = None
    gsd: float | None = None
    length: Length = field(default_factory=Length.of)
    batch_size: int | None = None
    lr: float | None = None
    find_lr: bool = False
    val_fraction: float = 0.2
    patience: int | None = None
    augmentation: Augmentation | None = None
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    hard_examples: bool = False
    seed: int = 0
    start: Start = field(default_factory=Start)
    out: Path | None = None
    overwrite: bool = False
    progress: bool = True

    @classmethod
    def of(
        cls,
        *,
        epochs: int | None = None,
        steps: int | None = None,
        max_minutes: float | None = None,
        start: str = "synthetic",
        init: str | os.PathLike[str] | None = None,
        resume: str | os.PathLike[str] | None = None,
        out: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> TrainOptions:
        """The options of ``geodetect train``, by its option names (``start``,
        ``init`` and ``resume`` become a :class:`Start`; ``epochs``, ``steps`` and
        ``max_minutes`` a :class:`Length`)."""
        return cls(
            length=Length.of(epochs, steps, max_minutes),
            start=Start.of(start, init=init, resume=resume),
            out=None if out is None else Path(out),
            **options,
        )

    def but(self, **changes: Any) -> TrainOptions:
        """A copy with ``changes``, checked again."""
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place while checking
        if self.backbone not in BACKBONES:
            raise InputError(f"--backbone {self.backbone}: choose one of {', '.join(BACKBONES)}")
        if self.preset not in PRESETS:
            raise InputError(f"--preset {self.preset}: choose one of {', '.join(PRESETS)}")
        if self.box_loss is not None and self.box_loss not in BOX_LOSSES:
            raise InputError(f"box loss {self.box_loss!r}: choose one of {', '.join(BOX_LOSSES)}")
        for name in ("anchor_scales", "anchor_ratios"):
            values = getattr(self, name)
            if values is None:
                continue
            values = tuple(float(v) for v in values)
            if not values or not all(math.isfinite(v) and v > 0 for v in values):
                raise InputError(f"{name.replace('anchor_', '')} {values}: give positive numbers")
            set_(self, name, values)
        if self.chip_size is not None and (self.chip_size % 32 or self.chip_size < 32):
            raise InputError(
                f"--chip-size {self.chip_size}: must be a multiple of 32 and at least 32"
            )
        if self.gsd is not None and not (math.isfinite(self.gsd) and self.gsd > 0):
            raise InputError(f"--gsd {self.gsd}: a pixel size in metres must be above 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size}: at least 1")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"--lr {self.lr}: give a learning rate above 0")
        if not 0 <= self.val_fraction <= 0.9:
            raise InputError(f"--val-fraction {self.val_fraction}: give a share in 0-0.9")
        if self.patience is not None and self.patience < 1:
            raise InputError(f"--patience {self.patience}: at least 1 epoch")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision {self.precision}: choose one of {', '.join(PRECISIONS)}")
        if self.workers is not None and self.workers < 0:
            raise InputError(f"--workers {self.workers}: 0 or more")
        if self.out is not None:
            out = Path(self.out)
            set_(self, "out", out)
            if out.exists() and not self.overwrite:
                raise OutputError(f"{out}: already exists; pass --overwrite to replace it")
            folder = out.parent if str(out.parent) else Path(".")
            if not folder.is_dir():
                raise OutputError(f"{out}: folder {out.parent} does not exist; create it")
