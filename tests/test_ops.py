import pytest
import torch

from shufflenet.models.ops import (
    channel_shuffle,
    channel_split,
    concat_shuffle,
    shuffle_permutation,
)


@pytest.mark.parametrize("channels,groups", [(6, 2), (12, 3), (24, 8), (7, 1)])
def test_shuffle_is_the_papers_permutation(channels, groups):
    x = torch.arange(channels, dtype=torch.float32).view(1, channels, 1, 1).expand(2, -1, 3, 4)
    out = channel_shuffle(x.contiguous(), groups)
    per_group = channels // groups
    # output channel k*g + j holds input channel j*(C/g) + k
    for k in range(per_group):
        for j in range(groups):
            assert out[0, k * groups + j, 0, 0].item() == j * per_group + k
    assert out[:, :, 0, 0].tolist()[0] == [float(i) for i in shuffle_permutation(channels, groups)]


def test_shuffle_by_g_then_by_c_over_g_is_identity():
    x = torch.randn(2, 24, 5, 7)
    for g in (2, 3, 4, 6, 8):
        assert torch.equal(channel_shuffle(channel_shuffle(x, g), 24 // g), x)


def test_shuffle_mixes_groups():
    x = torch.randn(1, 12, 2, 2)
    assert not torch.equal(channel_shuffle(x, 3), x)


@pytest.mark.parametrize("groups", [2, 3])
def test_shuffle_keeps_memory_format(groups):
    x = torch.randn(2, 12, 5, 6)
    xl = x.contiguous(memory_format=torch.channels_last)
    out = channel_shuffle(xl, groups)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, channel_shuffle(x, groups))
    assert channel_shuffle(x, groups).is_contiguous()


def test_shuffle_rejects_indivisible_channels_and_bad_rank():
    with pytest.raises(ValueError, match="divisible"):
        channel_shuffle(torch.randn(1, 10, 2, 2), 3)
    with pytest.raises(ValueError, match="4-D"):
        channel_shuffle(torch.randn(10, 2, 2), 2)


def test_concat_shuffle_equals_cat_then_shuffle():
    a, b = torch.randn(2, 8, 3, 5), torch.randn(2, 8, 3, 5)
    assert torch.equal(concat_shuffle(a, b), channel_shuffle(torch.cat((a, b), 1), 2))
    c = torch.randn(2, 8, 3, 5)
    assert torch.equal(concat_shuffle(a, b, c), channel_shuffle(torch.cat((a, b, c), 1), 3))
    al, bl = (t.contiguous(memory_format=torch.channels_last) for t in (a, b))
    out = concat_shuffle(al, bl)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, concat_shuffle(a, b))
    with pytest.raises(ValueError, match="same shape"):
        concat_shuffle(a, torch.randn(2, 4, 3, 5))


def test_channel_split_halves_are_views():
    x = torch.randn(2, 8, 3, 3)
    left, right = channel_split(x)
    assert torch.equal(torch.cat((left, right), 1), x)
    assert left.data_ptr() == x.data_ptr()
    with pytest.raises(ValueError):
        channel_split(torch.randn(1, 7, 2, 2))


def test_shufflenet_ops_is_an_alias_of_models_ops():
    import shufflenet
    import shufflenet.models.ops as ops
    from shufflenet.ops import channel_shuffle

    alias = shufflenet.ops  # bound by ``import shufflenet`` alone
    assert alias.__all__ == ops.__all__
    assert all(getattr(alias, name) is getattr(ops, name) for name in ops.__all__)
    assert channel_shuffle is ops.channel_shuffle is shufflenet.channel_shuffle
