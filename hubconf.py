"""torch.hub entry points, one per registered model:

    model = torch.hub.load("OWNER/shufflenet", "shufflenet_v2_x1_0", num_classes=10)
    model = torch.hub.load("OWNER/shufflenet", "shufflenet_v2_x1_0", weights="v2.safetensors")

Keyword arguments go to ``shufflenet.create_model`` (``num_classes``, ``in_chans``,
``drop_rate``, ``layout``, ``pretrained``: ``True`` or a source loads the weights its publisher
hosts, see ``shufflenet.list_pretrained()``). ``weights=FILE`` loads a weights file of that
model instead: ours, or one made from torchvision, mmpretrain or Megvii checkpoints with
``shufflenet convert``.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

import shufflenet

dependencies = ["torch", "torchvision", "safetensors"]


def _entrypoint(name):
    def entrypoint(weights=None, pretrained=False, **kwargs):
        if weights is None:
            return shufflenet.create_model(name, pretrained=pretrained, **kwargs)
        if pretrained:
            raise ValueError("weights=FILE and pretrained: give one of them")
        if kwargs:
            raise ValueError(f"weights={weights!r} fixes the model; drop {sorted(kwargs)}")
        model = shufflenet.load(weights)
        if model.model_config["name"] != name:
            raise ValueError(f"{weights} holds {model.model_config['name']}, not {name}")
        return model

    info = shufflenet.get_model_info(name)
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = (
        f"{info.description}: shufflenet.create_model({name!r}, **kwargs), or the weights file "
        "weights=FILE."
    )
    return entrypoint


for _name in shufflenet.list_models():
    globals()[_name] = _entrypoint(_name)
