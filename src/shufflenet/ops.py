"""The channel operations under ``shufflenet.ops``: the same objects as
:mod:`shufflenet.models.ops`, so that both import paths work."""

from .models.ops import channel_shuffle, channel_split, concat_shuffle, shuffle_permutation

__all__ = ["channel_shuffle", "channel_split", "concat_shuffle", "shuffle_permutation"]
