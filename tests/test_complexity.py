import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import shufflenet
from shufflenet.complexity import profile
from shufflenet.models.ops import concat_shuffle


@pytest.mark.parametrize("name", shufflenet.list_models())
def test_flops_agree_with_torch_flop_counter(name):
    # counting needs shapes only: the 12.7 GFLOPs model runs on the meta device
    device = "meta" if (shufflenet.get_model_info(name).paper_mflops or 0) > 1000 else "cpu"
    with torch.device(device):
        model = shufflenet.create_model(name).eval()
    stats = profile(model, (3, 64, 80))
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 64, 80, device=device))
    assert 2 * stats.flops == counter.get_total_flops()
    # params: the eval-mode network; training-only auxiliary classifiers only in total_params
    training_only = sum(
        p.numel() for n, p in model.named_parameters() if n.startswith("aux_heads.")
    )
    assert training_only > 0 or name != "shufflenet_v2_large"
    assert stats.total_params == sum(p.numel() for p in model.parameters())
    assert stats.params == stats.total_params - training_only
    assert sum(layer.params for layer in stats.layers) == stats.params


def test_mac_of_1x1_conv_is_the_v2_formula():
    h, w, c1, c2 = 7, 9, 16, 24
    stats = profile(nn.Sequential(nn.Conv2d(c1, c2, 1, bias=False)), (c1, h, w))
    assert stats.flops == h * w * c1 * c2
    assert stats.mac == h * w * (c1 + c2) + c1 * c2
    assert stats.mac_bytes == 4 * stats.mac
    (row,) = stats.layers
    assert row.category == "1x1 conv" and row.input_shape == (1, c1, h, w)


def test_group_conv_mac_grows_with_groups_at_fixed_flops():
    # G2: same FLOPs (c scaled by sqrt(g) approximately), MAC grows with g
    macs = []
    for g, c in ((1, 64), (2, 90), (4, 128)):
        conv = nn.Conv2d(c, c, 1, groups=g, bias=False)
        macs.append(profile(nn.Sequential(conv), (c, 14, 14)).mac)
    assert macs[0] < macs[1] < macs[2]


class _ShuffleOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        a, b = self.conv(x).chunk(2, dim=1)  # views: free
        return concat_shuffle(a, b)  # one copy: read 8 channels, write 8


def test_views_are_free_and_copies_are_charged():
    stats = profile(_ShuffleOnly(), (8, 5, 5))
    moves = [layer for layer in stats.layers if layer.category == "shuffle/concat/split"]
    assert len(moves) == 1
    assert moves[0].name.startswith("model:")
    assert moves[0].mac == 2 * 8 * 5 * 5


def test_categories_cover_v2_unit():
    stats = profile(shufflenet.create_model("shufflenet_v2_x0_5"), (3, 64, 64))
    cats = stats.by_category()
    for category in (
        "1x1 conv",
        "depthwise conv",
        "batchnorm",
        "element-wise",
        "shuffle/concat/split",
        "pooling",
        "linear",
    ):
        assert category in cats
    assert sum(c["mac"] for c in cats.values()) == stats.mac
    v1 = profile(shufflenet.create_model("shufflenet_v1_g3_x0_5"), (3, 64, 64)).by_category()
    assert "group conv" in v1


def test_bad_input_size():
    with pytest.raises(ValueError, match="input_size"):
        profile(shufflenet.create_model("shufflenet_v2_x0_5"), (224, 224))


def test_profile_restores_training_mode():
    model = shufflenet.create_model("shufflenet_v2_x0_5").train()
    profile(model, (3, 32, 32))
    assert model.training
