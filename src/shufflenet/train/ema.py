"""An exponential moving average of a module's weights, kept beside the run.

:class:`WeightEMA` averages every floating-point parameter and buffer (BatchNorm's running
statistics included) after each optimizer step, ``avg = decay * avg + (1 - decay) * value``,
and copies the others (BatchNorm's batch counter). Its tensors follow the module's own layout,
entry for entry, so it averages the shuffle-free training form as it would the standard model
(the average commutes with the form's channel permutations); ``state_dict`` takes a map to the
standard layout for checkpoints and for the model that is validated and saved.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["RunEMA", "WeightEMA"]

# (key, tensor in the module's layout) -> the tensor in the layout a state dict speaks
KeyMap = Callable[[str, Tensor], Tensor]


def _entries(module: nn.Module) -> list[tuple[str, Tensor]]:
    return [*module.named_parameters(), *module.named_buffers()]


class WeightEMA:
    """The average of ``module``'s parameters and buffers, starting as a copy of them."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.keys = [key for key, _ in _entries(module)]
        self.tensors = [t.detach().clone() for _, t in _entries(module)]

    def _pairs(self, module: nn.Module) -> list[tuple[Tensor, Tensor]]:
        entries = _entries(module)
        if [key for key, _ in entries] != self.keys:
            raise ValueError("module has other parameters or buffers than the average")
        return [(avg, t.detach()) for avg, (_, t) in zip(self.tensors, entries, strict=True)]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """One step of the average towards ``module``'s current values."""
        pairs = self._pairs(module)
        floats = [(a, t) for a, t in pairs if a.is_floating_point()]
        if floats:
            averages, values = zip(*floats, strict=True)
            torch._foreach_lerp_(list(averages), list(values), 1.0 - self.decay)
        for a, t in pairs:
            if not a.is_floating_point():
                a.copy_(t)

    @torch.no_grad()
    def copy_from(self, module: nn.Module) -> None:
        """Restart the average at ``module``'s current values (during the lr warm-up)."""
        for a, t in self._pairs(module):
            a.copy_(t)

    @torch.no_grad()
    def copy_to(self, module: nn.Module, to_standard: KeyMap | None = None) -> None:
        """Write the average into ``module`` (the standard model when ``to_standard`` maps)."""
        for key, (avg, t) in zip(self.keys, self._pairs(module), strict=True):
            t.copy_(avg if to_standard is None else to_standard(key, avg))

    def state_dict(self, to_standard: KeyMap | None = None) -> dict[str, Tensor]:
        """The average as a state dict (copies), each tensor mapped by ``to_standard``."""
        return {
            key: (t if to_standard is None else to_standard(key, t)).clone()
            for key, t in zip(self.keys, self.tensors, strict=True)
        }

    @torch.no_grad()
    def load_state_dict(
        self, state: Mapping[str, Tensor], from_standard: KeyMap | None = None
    ) -> None:
        """Load a :meth:`state_dict` (mapped by ``from_standard`` into the module's layout)."""
        if sorted(state) != sorted(self.keys):
            raise ValueError("the saved average has other entries than the model")
        for key, avg in zip(self.keys, self.tensors, strict=True):
            if not isinstance(state[key], Tensor) or state[key].shape != avg.shape:
                raise ValueError(f"the saved average of {key} does not fit the model")
            value = state[key] if from_standard is None else from_standard(key, state[key])
            avg.copy_(value)


class RunEMA:
    """A run's EMA: the average of the ``trained`` module (the model, or its shuffle-free form
    ``fast``), a copy of the standard ``model`` it is written into for validation and the
    files (:attr:`model`), and the warm-up: until step ``warmup_steps`` the average restarts
    at the weights at every step (as torchvision's recipe resets it)."""

    def __init__(
        self,
        trained: nn.Module,
        model: nn.Module,
        fast: Any,
        decay: float,
        warmup_steps: int,
    ) -> None:
        self.trained, self.fast, self.warmup_steps = trained, fast, warmup_steps
        self.average = WeightEMA(trained, decay)
        self.model = copy.deepcopy(model)

    def _to_standard(self, key: str, value: Tensor) -> Tensor:
        return value if self.fast is None else self.fast.standard_tensor(key, value)

    def _from_standard(self, key: str, value: Tensor) -> Tensor:
        return value if self.fast is None else self.fast.fast_tensor(key, value)

    def step(self, step: int) -> None:
        """After optimizer step ``step`` (0-based, over the run)."""
        if step < self.warmup_steps:
            self.average.copy_from(self.trained)
        else:
            self.average.update(self.trained)

    def sync(self) -> None:
        """Write the average into :attr:`model`."""
        self.average.copy_to(self.model, self._to_standard)

    def state_dict(self) -> dict[str, Tensor]:
        """The average in the standard layout."""
        return self.average.state_dict(self._to_standard)

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.average.load_state_dict(state, self._from_standard)
        self.sync()
