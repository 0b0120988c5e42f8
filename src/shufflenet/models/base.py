"""What every ShuffleNet network shares: blocks, stem, stages, head, feature access, weight init.

Blocks take their parts: ``norm_layer`` (a class such as ``nn.BatchNorm2d``, called with the
channel count) and ``act_layer`` (a class such as ``nn.ReLU`` or ``nn.Hardswish``, called with
``inplace=True``), so a family with other layers is a new module, not edits here.

Every network is a timm model in its API (``reset_classifier(num_classes, global_pool)``,
``get_classifier``, ``head_hidden_size``, ``forward_intermediates``,
``prune_intermediate_layers``, ``set_grad_checkpointing``), compiles with ``torch.jit.script``
and traces with ``torch.fx``: input checks raise ``ValueError`` in eager mode and TorchScript and
are left out of FX graphs. Class-level annotations of submodules are for type checkers only
(``TYPE_CHECKING``): TorchScript cannot read them. Annotations here are objects, not strings
(no ``from __future__ import annotations``): FX copies ``forward``'s into its graphs, which
TorchScript then compiles.
"""

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..preprocessing import MAX_CLASSES, MAX_IN_CHANS
from .ops import is_fx_proxy, shape_text

__all__ = [
    "AuxOutputs",
    "ConvNormAct",
    "LayerFactory",
    "ShuffleNetBase",
    "check_global_pool",
    "check_input",
    "check_positive",
    "check_split_unit",
    "depthwise_conv",
    "feature_indices",
    "first_conv_name",
    "make_act",
    "run_checkpointed",
    "set_norms_eval",
]

LayerFactory = Callable[..., nn.Module]
ModuleT = TypeVar("ModuleT", bound=nn.Module)


class AuxOutputs(NamedTuple):
    """What a model with auxiliary classifiers returns in training mode (torchvision's Inception
    v3 convention): the main ``logits`` and the auxiliary heads' logits, in the order of the
    model's ``aux_loss_weights``. In eval mode such a model returns the logits tensor only."""

    logits: Tensor
    aux: list[Tensor]


def make_act(act_layer: LayerFactory) -> nn.Module:
    """An activation module computing in place (``nn.ReLU``, ``nn.Hardswish``, ...)."""
    return act_layer(inplace=True)


def _check_num_classes(num_classes: int) -> None:
    if (
        not isinstance(num_classes, int)
        or isinstance(num_classes, bool)
        or not 0 <= num_classes <= MAX_CLASSES
    ):
        raise ValueError(
            f"num_classes must be an integer within 0..{MAX_CLASSES} (0: no classifier), got "
            f"{num_classes!r}"
        )


def check_global_pool(global_pool: Any) -> str:
    """``global_pool`` if it is ``"avg"`` or ``""``; ``ValueError`` otherwise."""
    if not isinstance(global_pool, str) or global_pool not in ("avg", ""):
        raise ValueError(
            f"global_pool must be 'avg' (the head's average pooling) or '' (no pooling: the "
            f"head runs at each position of model.forward_features(x)), got {global_pool!r}"
        )
    return global_pool


def check_input(x: Tensor, in_chans: int) -> None:
    """``ValueError`` unless ``x`` is an ``(N, in_chans, H, W)`` batch (not checked while FX
    traces)."""
    if is_fx_proxy(x):
        return
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected input of shape (N, {in_chans}, H, W), got {shape_text(x)}")


def feature_indices(count: int, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
    """timm's choice of feature maps among ``count``: ``None`` all, an int ``n`` the last ``n``,
    a sequence those indices (negative ones from the end); the indices and the largest."""
    if indices is None:
        indices = count
    if isinstance(indices, bool):
        raise ValueError(f"indices must be a count or a sequence of indices, got {indices!r}")
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(f"indices must be within 1..{count} as a count, got {indices}")
        chosen = list(range(count - indices, count))
    else:
        chosen = []
        for i in indices:
            if not isinstance(i, int) or isinstance(i, bool) or not -count <= i < count:
                raise ValueError(f"indices must be within {-count}..{count - 1}, got {indices!r}")
            chosen.append(i % count)
        if not chosen:
            raise ValueError("indices is empty: choose at least one feature map")
    return chosen, max(chosen)


def first_conv_name(model: nn.Module) -> str | None:
    """The name of ``model``'s first ``nn.Conv2d`` (its stem conv), ``None`` without one."""
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def set_norms_eval(module: nn.Module, names: tuple[str, ...]) -> None:
    """Put the BatchNorms inside the submodules ``names`` of ``module`` in eval mode (``""``:
    all of them), so that they normalise with, and never update, their running statistics."""
    for name in names:
        for m in module.get_submodule(name).modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def check_positive(**values: int) -> None:
    """Raise ``ValueError`` unless every named integer is >= 1."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def depthwise_conv(channels: int, stride: int, kernel_size: int = 3) -> nn.Conv2d:
    """A bias-free depthwise ``kernel_size`` conv with "same" padding."""
    padding = kernel_size // 2
    return nn.Conv2d(channels, channels, kernel_size, stride, padding, groups=channels, bias=False)


def check_split_unit(in_channels: int, out_channels: int, stride: int) -> None:
    """The widths of a unit that splits its channels in halves (V2 and its descendants)."""
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if out_channels % 2:
        raise ValueError(f"output channels must be even to split in halves, got {out_channels}")
    if stride == 1 and in_channels != out_channels:
        raise ValueError(
            f"a stride-1 unit keeps its width, got {in_channels} -> {out_channels} channels"
        )


def megvii_init(root: nn.Module, small_std: Callable[[str], bool], prefix: str = "") -> None:
    """Megvii's release init of ``root``'s modules: convs N(0, 0.01) where ``small_std(name)``
    (the stem, SE convs) and N(0, 1 / input channels per group) otherwise, BN scale 1 and shift
    1e-4, Linear N(0, 0.01); biases 0. ``prefix`` starts the names, as in ``named_modules``."""
    for name, m in root.named_modules(prefix=prefix):
        if isinstance(m, nn.Conv2d):
            std = 0.01 if small_std(name) else 1.0 / m.weight.shape[1]
            nn.init.normal_(m.weight, 0.0, std)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.constant_(m.bias, 1e-4)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
        if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


@contextlib.contextmanager
def _norm_stats_kept(module: nn.Module) -> Iterator[None]:
    """Restore the running statistics of ``module``'s BatchNorms on exit."""
    buffers = [
        b
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in m.buffers(recurse=False)
    ]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in zip(buffers, saved, strict=True):
                b.copy_(value)


def run_checkpointed(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` through ``torch.utils.checkpoint``: activations are recomputed in the
    backward pass instead of stored. The recomputation leaves the BatchNorms' running
    statistics as the forward pass left them (updated once, as without checkpointing)."""
    out: Tensor = checkpoint(
        module,
        x,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _norm_stats_kept(module)),
    )
    return out


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) -> norm -> optional activation; keys ``0.*``, ``1.*`` like torchvision."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            norm_layer(out_channels),
        ]
        if act_layer is not None:
            layers.append(make_act(act_layer))
        super().__init__(*layers)


class ShuffleNetBase(nn.Module):
    """Shared forward paths and head of every ShuffleNet family.

    A network is a stem (the modules named in ``stem_names``, run in order), body stages
    (``stage_names``, run in order), an optional last conv (:meth:`_last_conv`, the module
    ``last_conv_name``) and the head (:meth:`_build_head`). V1 and V2 have the stem ``conv1``,
    ``maxpool`` and the stages ``stage2``..``stage4``; other families override the two name
    tuples, and :meth:`_scripted_trunk`, the same modules named for TorchScript.
    ``feature_info`` describes the four feature maps that :meth:`forward_stages` returns (C2..C5,
    strides 4 to 32), each the output of the stem or stage module it names, as detection necks
    expect.
    """

    stem_names: tuple[str, ...] = ("conv1", "maxpool")
    stage_names: tuple[str, ...] = ("stage2", "stage3", "stage4")
    last_conv_name: str | None = None

    def __init__(
        self, in_chans: int, num_classes: int, drop_rate: float, classifier_bias: bool = True
    ) -> None:
        super().__init__()
        check_positive(in_chans=in_chans)
        if in_chans > MAX_IN_CHANS:
            raise ValueError(f"in_chans must be within 1..{MAX_IN_CHANS}, got {in_chans}")
        _check_num_classes(num_classes)
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.classifier_bias = classifier_bias  # False in Megvii's releases
        self.feature_info: list[dict[str, int | str]] = []
        self.num_features = 0
        # How to rebuild this model: set by ``create_model``, recorded by ``shufflenet.save``.
        self.model_config: dict[str, Any] = {}
        # Metadata of the weights file this model was loaded from (``shufflenet.load``).
        self.weights_metadata: dict[str, Any] = {}
        # Submodules whose BatchNorms stay in eval mode in training (models.backbone sets them).
        self.eval_norms: tuple[str, ...] = ()
        self.grad_checkpointing = False

    # -- construction helpers -------------------------------------------------------------
    def _build_head(self, num_features: int) -> None:
        self.num_features = self.head_hidden_size = num_features
        self.set_global_pool("avg")
        self.dropout = nn.Dropout(self.drop_rate) if self.drop_rate > 0 else nn.Identity()
        self.fc: nn.Module = self._make_classifier(self.num_classes)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        return nn.Linear(self.num_features, num_classes, bias=self.classifier_bias)

    def _like_model(self, build: Callable[[], ModuleT]) -> ModuleT:
        """``build()`` on this model's device, in its dtype and mode (a new head keeps them)."""
        ref = next((p for p in self.parameters() if p.is_floating_point()), None)
        with contextlib.nullcontext() if ref is None else torch.device(ref.device):
            module = build()
        if ref is not None:
            module.to(dtype=ref.dtype)
        return module.train(self.training)

    def _set_feature_info(self, channels: list[int]) -> None:
        modules = ["maxpool", "stage2", "stage3", "stage4"]
        self.feature_info = [
            {"num_chs": c, "reduction": 4 * 2**i, "module": m}
            for i, (c, m) in enumerate(zip(channels, modules, strict=True))
        ]

    def init_weights(self) -> None:
        """He-normal (fan_out) convs, unit BN scale and zero shift, N(0, 0.01) classifier."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- public API -----------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        """The classifier (timm's API): ``fc``."""
        return self.fc

    def set_global_pool(self, global_pool: str) -> None:
        """``"avg"``: the head averages the feature map; ``""``: no pooling, the head (and the
        classifier, a Linear over the channels) runs at each position. The classifier is kept."""
        self.pool_type = check_global_pool(global_pool)
        self.global_pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0 removes it), on the
        model's device, in its dtype and mode; ``global_pool`` (``None``: kept) as in
        :meth:`set_global_pool`. The ``model_config`` that ``shufflenet.save`` records follows."""
        _check_num_classes(num_classes)
        if global_pool is not None:
            self.set_global_pool(global_pool)
        self.num_classes = num_classes
        if self.model_config:
            self.model_config["num_classes"] = num_classes
        self.fc = self._like_model(lambda: self._make_classifier(num_classes))
        if isinstance(self.fc, nn.Linear):
            nn.init.normal_(self.fc.weight, 0.0, 0.01)
            if self.fc.bias is not None:
                nn.init.zeros_(self.fc.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing (timm's API): in training with gradients on, each unit of the
        stages runs through ``torch.utils.checkpoint``, trading a second forward pass of the
        units in backward for not storing their activations. Results, gradients and BatchNorm
        statistics are those without it."""
        if not isinstance(enable, bool):
            raise ValueError(f"enable must be True or False, got {enable!r}")
        self.grad_checkpointing = enable

    def _run_stage(self, name: str, x: Tensor) -> Tensor:
        """The stem or stage module ``name`` on ``x``; a stage unit by unit through
        :func:`run_checkpointed` while gradient checkpointing applies (not in FX graphs)."""
        module = getattr(self, name)
        if not (
            self.grad_checkpointing
            and self.training
            and torch.is_grad_enabled()
            and name in self.stage_names
            and not is_fx_proxy(x)
        ):
            return module(x)
        for unit in module.children() if isinstance(module, nn.Sequential) else (module,):
            x = run_checkpointed(unit, x)
        return x

    def train(self, mode: bool = True) -> "ShuffleNetBase":
        """Training mode, except the BatchNorms inside ``eval_norms`` (frozen stages,
        ``norm_eval``: see :mod:`shufflenet.models.backbone`), which stay in eval mode."""
        super().train(mode)
        if mode:
            set_norms_eval(self, self.eval_norms)
        return self

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Feature maps C2..C5 (strides 4, 8, 16, 32), described by ``feature_info``."""
        return cast(list[Tensor], self.forward_intermediates(x, intermediates_only=True))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's API: the feature maps ``indices`` of ``feature_info`` (``None``: all, ``n``:
        the last ``n``), in order, and with them (unless ``intermediates_only``) the output of
        :meth:`forward_features`, or with ``stop_early`` that of the last stage run (the stages
        after the last chosen map are skipped). ShuffleNet has no final norm: ``norm`` changes
        nothing. ``output_fmt``: ``"NCHW"`` only."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        chosen, last = feature_indices(len(self.feature_info), indices)
        taps = {str(self.feature_info[i]["module"]) for i in chosen}
        check_input(x, self.in_chans)
        names = (*self.stem_names, *self.stage_names)
        end = names.index(str(self.feature_info[last]["module"])) + 1
        run = names[:end] if stop_early or intermediates_only else names
        intermediates = []
        for name in run:
            x = self._run_stage(name, x)
            if name in taps:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return (self._last_conv(x) if len(run) == len(names) else x), intermediates

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """timm's API: keep what the feature maps ``indices`` need (as in
        :meth:`forward_intermediates`) and return their indices. The later stages become
        ``nn.Identity`` (their names stay); the last conv goes with them, or with
        ``prune_norm`` (it stands where timm's models have their final norm); ``prune_head``
        removes the head (``reset_classifier(0, "")``, and any layers between pooling and
        classifier). ``num_features`` follows."""
        chosen, last = feature_indices(len(self.feature_info), indices)
        names = (*self.stem_names, *self.stage_names)
        end = names.index(str(self.feature_info[last]["module"])) + 1
        for name in names[end:]:
            setattr(self, name, nn.Identity())
        if end < len(names) or prune_norm:
            if self.last_conv_name is not None:
                setattr(self, self.last_conv_name, nn.Identity())
            self.num_features = self.head_hidden_size = int(self.feature_info[last]["num_chs"])
        if prune_head:
            self._prune_head_layers()
            self.reset_classifier(0, "")
        return chosen

    def _prune_head_layers(self) -> None:
        """Remove the head's layers besides pooling and classifier (none here)."""

    def forward_features(self, x: Tensor) -> Tensor:
        """The feature map right before global pooling (after the last conv, if any)."""
        check_input(x, self.in_chans)
        if torch.jit.is_scripting():
            x = self._scripted_trunk(x)
        else:
            for name in (*self.stem_names, *self.stage_names):
                x = self._run_stage(name, x)
        return self._last_conv(x)

    def _scripted_trunk(self, x: Tensor) -> Tensor:
        """The stem and stages, each module by its name: what TorchScript compiles (it has no
        ``getattr`` of a name in a variable). Each family spells its own out."""
        raise NotImplementedError(f"{type(self).__name__} does not name its stages for TorchScript")

    def _last_conv(self, x: Tensor) -> Tensor:
        return x

    def _classify(self, x: Tensor) -> Tensor:
        """The classifier on pooled features, or at each position of an unpooled map."""
        if self.pool_type:
            return self.fc(x)
        return self.fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pooling (unless ``global_pool=''``), dropout and the classifier
        (skipped if ``pre_logits``)."""
        x = self.global_pool(x)
        if self.pool_type:
            x = torch.flatten(x, 1)
        x = self.dropout(x)
        return x if pre_logits else self._classify(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
