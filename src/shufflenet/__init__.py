"""ShuffleNet V1 and V2, exact to the papers, with tools to measure, train and deploy them.

>>> import shufflenet
>>> model = shufflenet.create_model("shufflenet_v2_x1_0", num_classes=10)
>>> shufflenet.profile(model).flops  # multiply-adds at 224x224
"""

from .complexity import ModelProfile, profile
from .hub import PretrainedWeights, fetch, get_pretrained, list_pretrained, load_pretrained
from .models import ModelInfo, ShuffleNetFeatures, create_model, get_model_info, list_models
from .models import timm_interop as _timm_interop
from .models.v1 import ShuffleNetV1
from .models.v2 import ShuffleNetV2
from .ops import channel_shuffle, channel_split, concat_shuffle
from .preprocessing import Preprocessing
from .weights import load, read_metadata, save

__all__ = [
    "ModelInfo",
    "ModelProfile",
    "Preprocessing",
    "PretrainedWeights",
    "ShuffleNetFeatures",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "channel_shuffle",
    "channel_split",
    "concat_shuffle",
    "create_model",
    "fetch",
    "get_model_info",
    "get_pretrained",
    "list_models",
    "list_pretrained",
    "load",
    "load_pretrained",
    "profile",
    "read_metadata",
    "save",
]
__version__ = "0.1.0"

# timm models too, where timm is installed: after the hub, whose files timm's registry lists
_timm_interop.install()
