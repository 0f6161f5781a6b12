"""Tiny MLP architectures registered with timm, for the embedded digits zoo.

timm's MLP entrypoints fix patch size, depth and width in their own argument dict, so
``create_model('mixer_s16_224', patch_size=4)`` is rejected. These entrypoints keep the same classes and
default configs but let every size be overridden, so the zoo can say ``create_model('tiny_mixer', ...)``.
"""

from __future__ import annotations

from timm.layers import GatedMlp
from timm.models import register_model
from timm.models.mlp_mixer import Affine, ResBlock, SpatialGatingBlock, _create_mixer


def _tiny(base_variant: str, defaults: dict, kwargs: dict):
    return _create_mixer(base_variant, pretrained=False, **{**defaults, **kwargs})


@register_model
def tiny_mixer(pretrained=False, **kwargs):
    return _tiny("mixer_s16_224", dict(patch_size=4, num_blocks=3, embed_dim=64), kwargs)


@register_model
def tiny_resmlp(pretrained=False, **kwargs):
    return _tiny("resmlp_12_224", dict(patch_size=4, num_blocks=3, embed_dim=64, mlp_ratio=4,
                                       block_layer=ResBlock, norm_layer=Affine), kwargs)


@register_model
def tiny_gmlp(pretrained=False, **kwargs):
    return _tiny("gmlp_ti16_224", dict(patch_size=4, num_blocks=3, embed_dim=64, mlp_ratio=4,
                                       block_layer=SpatialGatingBlock, mlp_layer=GatedMlp), kwargs)
