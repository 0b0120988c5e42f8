"""Training with the papers' recipe, exact resume and torchrun DDP.

:func:`fit` trains a registered model on ``digits`` or an ImageFolder tree as described by a
:class:`TrainConfig` and writes ``checkpoint.pt``, ``model.safetensors``, ``metrics.csv`` and
``curves.png`` into the run directory. Modules: ``config`` (the run's settings and recipe),
``schedule`` (lr schedule, weight-decay groups), ``distributed`` (torchrun), ``rng`` (seeding
and the random state behind exact resume), ``files`` (the run directory's files), ``model`` (the
network a run trains and its loss) and ``loop``
(the run). Evaluation lives in :mod:`shufflenet.evaluate`; its API is re-exported here.
"""

from ..evaluate import EvalResult, evaluate, evaluate_weights
from .config import TrainConfig, read_run_config
from .files import CHECKPOINT_FORMAT, METRIC_COLUMNS
from .loop import FitResult, fit
from .schedule import lr_factor, param_groups

__all__ = [
    "CHECKPOINT_FORMAT",
    "METRIC_COLUMNS",
    "EvalResult",
    "FitResult",
    "TrainConfig",
    "evaluate",
    "evaluate_weights",
    "fit",
    "lr_factor",
    "param_groups",
    "read_run_config",
]
