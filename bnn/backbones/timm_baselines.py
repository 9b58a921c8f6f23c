"""Full-precision comparison backbones built with timm (the rows "ResNet-50", "ViT-B/32", "VGG16",
"DenseNet-121", "Xception" of Tables 1-3 in Lanzino et al., CVPRW 2024).

No hub download happens: ``create_backbone(name, pretrained=path)`` loads a local weights file.
"""

from __future__ import annotations

import timm

from bnn.backbones._registry import BACKBONES, BackboneSpec

# registry name -> (timm model name, family, display name, extra timm kwargs)
_BASELINES: dict[str, tuple[str, str, str, dict]] = {
    "resnet50": ("resnet50", "ResNet", "ResNet-50", {}),
    # Not in the paper: a small full-precision network, quick on a CPU; a distillation teacher.
    "resnet18": ("resnet18", "ResNet", "ResNet-18", {}),
    # dynamic_img_size: position embeddings are interpolated, so any resolution (tests, CIFAKE) works.
    "vit_base_patch32_224": ("vit_base_patch32_224", "ViT", "ViT-B/32", {"dynamic_img_size": True}),
    "vgg16": ("vgg16", "VGG", "VGG16", {}),
    "densenet121": ("densenet121", "DenseNet", "DenseNet-121", {}),
    "xception": ("legacy_xception", "Xception", "Xception", {}),
}


def _timm_factory(timm_name: str, extra: dict):
    def factory(num_classes: int = 1000, **kwargs):
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **{**extra, **kwargs})

    factory.__name__ = timm_name
    factory.__doc__ = f"timm {timm_name!r}, randomly initialised (weights come from a local file)."
    return factory


for _name, (_timm_name, _family, _display, _extra) in _BASELINES.items():
    BACKBONES.add(
        _name,
        BackboneSpec(
            factory=_timm_factory(_timm_name, _extra),
            family=_family,
            display_name=_display,
            binary=False,
            weights_file=f"{_name}.safetensors",
            weights_source=(
                f"https://huggingface.co/timm (model card of {_timm_name!r}: download "
                "model.safetensors and save it under this name)"
            ),
        ),
    )
