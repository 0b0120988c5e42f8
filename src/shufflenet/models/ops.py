"""Channel operations of the ShuffleNet family.

``channel_shuffle`` is the paper's permutation: view the channels as a ``(groups, C // groups)``
grid, transpose it and flatten, so output channel ``k * groups + j`` is input channel
``j * (C // groups) + k``. ``concat_shuffle`` fuses the V2 unit's concat and shuffle into one copy,
and ``channel_split`` is the (free) split that starts the next unit.

Every function here compiles with ``torch.jit.script`` and traces with ``torch.fx``: their
checks raise ``ValueError`` in eager mode and in TorchScript, and are left out of FX graphs,
whose inputs are symbolic (:func:`is_fx_proxy`). ``concat_shuffle_list`` is ``concat_shuffle``
for a list, the form TorchScript compiles (it has no ``*args``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["channel_shuffle", "channel_split", "concat_shuffle", "shuffle_permutation"]


def is_fx_proxy(x: Tensor) -> bool:
    """Whether ``x`` is a ``torch.fx`` proxy (symbolic tracing): shape checks and memory-format
    choices cannot look at it. Always ``False`` in TorchScript."""
    if torch.jit.is_scripting():
        return False
    return isinstance(x, torch.fx.Proxy)


def shape_text(x: Tensor) -> str:
    """``x``'s shape as Python prints a tuple, ``(1, 3, 224, 224)``, in TorchScript too."""
    dims = [str(d) for d in x.shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _check_groups(x: Tensor, groups: int) -> None:
    if is_fx_proxy(x):
        return
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D (N, C, H, W) tensor, got shape {shape_text(x)}")
    if groups < 1 or x.shape[1] % groups != 0:
        raise ValueError(
            f"cannot shuffle {x.shape[1]} channels into {groups} groups: "
            "the channel count must be divisible by groups"
        )


def _is_channels_last(x: Tensor) -> bool:
    # A traced graph takes the NCHW path, right for every memory format.
    if is_fx_proxy(x):
        return False
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def shuffle_permutation(channels: int, groups: int) -> list[int]:
    """Source index of every output channel of ``channel_shuffle`` (``out[i] = in[perm[i]]``)."""
    if groups < 1 or channels % groups:
        raise ValueError(f"{channels} channels are not divisible by {groups} groups")
    per_group = channels // groups
    return [j * per_group + k for k in range(per_group) for j in range(groups)]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Shuffle channels across ``groups`` (reshape to (g, C/g), transpose, flatten).

    Keeps the input's memory format: a channels_last input gives a channels_last output.
    """
    _check_groups(x, groups)
    if groups == 1:
        return x
    if _is_channels_last(x):
        # Shuffle the innermost (channel) axis of the NHWC storage, then view back as NCHW.
        nhwc = x.permute(0, 2, 3, 1)
        shuffled = nhwc.unflatten(3, (groups, -1)).transpose(3, 4).flatten(3)
        return shuffled.permute(0, 3, 1, 2)
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


def channel_split(x: Tensor, parts: int = 2) -> list[Tensor]:
    """Split channels into ``parts`` equal parts (views, no copy)."""
    if not is_fx_proxy(x) and (x.dim() != 4 or parts < 1 or x.shape[1] % parts != 0):
        raise ValueError(f"cannot split shape {shape_text(x)} into {parts} equal channel parts")
    chunks = x.chunk(parts, dim=1)
    return [chunks[i] for i in range(parts)]  # a list of proxies when traced, not one proxy


def concat_shuffle_list(xs: list[Tensor]) -> Tensor:
    """``channel_shuffle(torch.cat(xs, 1), len(xs))`` in a single copy.

    Stacking equal-sized tensors on a new axis after the channels and flattening interleaves
    them, which is exactly the shuffle of their concatenation.
    """
    if len(xs) < 2:
        raise ValueError("concat_shuffle needs two or more tensors of the same shape")
    if not is_fx_proxy(xs[0]):
        for x in xs:
            if x.shape != xs[0].shape:
                raise ValueError("concat_shuffle needs two or more tensors of the same shape")
    if _is_channels_last(xs[0]):
        stacked = torch.stack([x.permute(0, 2, 3, 1) for x in xs], dim=4)
        return stacked.flatten(3).permute(0, 3, 1, 2)
    return torch.stack(xs, dim=2).flatten(1, 2)


def concat_shuffle(*xs: Tensor) -> Tensor:
    """``channel_shuffle(torch.cat(xs, 1), len(xs))`` in a single copy (see
    :func:`concat_shuffle_list`)."""
    return concat_shuffle_list(list(xs))
