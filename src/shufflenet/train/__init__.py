"""Training with named recipes (the papers', torchvision's, fine-tuning), distillation, exact
resume and torchrun DDP.

:func:`fit` trains a registered model on ``digits`` or an ImageFolder tree as described by a
:class:`TrainConfig` and writes ``checkpoint.pt``, ``model.safetensors``, ``metrics.csv`` and
``curves.png`` into the run directory; it reports through callbacks (``log``: a line per epoch,
``progress``: a :class:`StepProgress` per step) and prints nothing. Modules: ``config`` (the
run's settings and recipe), ``schedule`` (the optimizers and lr decays by name, lr schedule,
weight-decay groups), ``recipe`` (the named recipes that fill what a config leaves ``None``),
``distributed`` (torchrun), ``rng`` (seeding and the random state behind exact resume),
``sampler`` (repeated augmentation), ``ema`` (the average of the weights), ``teacher``
(distillation), ``files`` (the run directory's files), ``model`` (the network a run trains and
its loss), ``calibrate`` (BN statistics after training), ``fast`` (:func:`train_model`: the
shuffle-free training form of V1 and V2), ``progress`` (what a run reports) and ``loop`` (the
run). Evaluation lives in :mod:`shufflenet.evaluate`; its API is re-exported here.
"""

from ..evaluate import EvalResult, evaluate, evaluate_weights
from .config import TrainConfig, read_run_config
from .fast import TrainFastModel, train_model, train_model_support
from .files import CHECKPOINT_FORMAT, METRIC_COLUMNS
from .loop import fit
from .progress import FitResult, StepProgress
from .recipe import RECIPES
from .schedule import OPTIMIZERS, SCHEDULES, lr_factor, param_groups

__all__ = [
    "CHECKPOINT_FORMAT",
    "METRIC_COLUMNS",
    "OPTIMIZERS",
    "RECIPES",
    "SCHEDULES",
    "EvalResult",
    "FitResult",
    "StepProgress",
    "TrainConfig",
    "TrainFastModel",
    "evaluate",
    "evaluate_weights",
    "fit",
    "lr_factor",
    "param_groups",
    "read_run_config",
    "train_model",
    "train_model_support",
]
