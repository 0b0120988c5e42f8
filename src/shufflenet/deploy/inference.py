"""Fast CPU inference in PyTorch: :func:`optimize`."""

from __future__ import annotations

import os
import shutil
import warnings

import torch
from torch import Tensor, nn

from .fastpath import EAGER, fast_model, fastpath_support
from .fuse import fuse_bn

__all__ = ["OPTIMIZE_BACKENDS", "has_cxx_compiler", "optimize"]


OPTIMIZE_BACKENDS = ("auto", "inductor", "jit", "eager")


class _ChannelsLast(nn.Module):
    """Runs ``model`` on a channels_last copy of the input (NCHW tensors work as they are)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


class _Inductor(nn.Module):
    """``torch.compile`` of ``model`` with weight freezing (constant-folded, prepacked oneDNN
    convolutions) and the C++ wrapper. The two settings are global; they apply around every call,
    since a graph compiles on a call, and ``torch.compile(options=...)`` leaves freezing off."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.compiled = torch.compile(model)

    def forward(self, x: Tensor) -> Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True, cpp_wrapper=True):
            return self.compiled(x)  # type: ignore[no-any-return]


def has_cxx_compiler() -> bool:
    """Whether TorchInductor finds a C++ compiler (``$CXX``, g++, clang++ or c++) on the PATH."""
    names = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    return any(shutil.which(name) for name in names if name)


def optimize(
    model: nn.Module, *, example: Tensor | None = None, backend: str = "auto"
) -> nn.Module:
    """A copy of ``model`` for fast CPU inference in PyTorch, same outputs within 1e-4.

    BatchNorms folded, shuffles absorbed (:func:`shufflenet.deploy.fastpath.fast_model` with the
    ``EAGER`` layout; other models only get the folding), channels_last memory format, then
    ``backend``: ``"inductor"`` is ``torch.compile`` with weight freezing and the C++ wrapper
    (the fastest; the first call of each input shape compiles, about half a minute on 2 cores);
    ``"jit"`` traces on ``example`` (default: one 224x224 image), freezes and applies
    ``torch.jit.optimize_for_inference`` (ready in a second; other input shapes work, tuned for
    this one); ``"auto"`` is inductor where a C++ compiler is found, else jit; ``"eager"`` stops
    before either. Run the result under ``torch.inference_mode()`` or ``no_grad``.
    """
    if backend not in OPTIMIZE_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(OPTIMIZE_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        backend = "inductor" if has_cxx_compiler() else "jit"
    fast = fast_model(model, EAGER) if fastpath_support(model) is None else fuse_bn(model)
    wrapped = _ChannelsLast(fast).eval()
    if backend == "eager":
        return wrapped
    if backend == "inductor":
        return _Inductor(wrapped).eval()
    if example is None:
        example = torch.randn(1, getattr(model, "in_chans", 3), 224, 224)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notices
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the input checks: constants
        traced = torch.jit.trace(wrapped, (example,), check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))
