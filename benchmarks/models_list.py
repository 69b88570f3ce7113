"""The models `benchmarks/models_sweep.py` exports: every re-parameterizable timm family, classic CNNs,
depthwise, grouped and dilated convolutions, list and dict outputs, non-square inputs (small sizes:
the graph's structure does not depend on them, and the sweep runs on 2 cores)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """One model: its label, where it comes from, its input (H, W), what it exercises, its constructor options."""

    name: str
    source: str  # timm | torchvision
    arch: str
    size: tuple[int, int]
    kind: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def _timm(arch: str, size: tuple[int, int], kind: str, name: str | None = None, **kwargs: Any) -> ModelSpec:
    return ModelSpec(name or arch, "timm", arch, size, kind, {"num_classes": 10, **kwargs})


def _tv(arch: str, size: tuple[int, int], kind: str, name: str | None = None, **kwargs: Any) -> ModelSpec:
    return ModelSpec(name or arch, "torchvision", arch, size, kind, kwargs)


REPARAM = "re-parameterizable"
MODELS: list[ModelSpec] = [
    # every timm family with fuse() / reparameterize() / switch_to_deploy(), and the families named with them
    _timm("repvgg_a0", (64, 64), REPARAM),
    _timm("repvgg_b1g4", (64, 48), REPARAM + ", grouped"),
    _timm("mobileone_s0", (64, 64), REPARAM),
    _timm("mobileone_s1", (48, 64), REPARAM),
    _timm("fastvit_t8", (64, 64), REPARAM),
    _timm("fastvit_sa12", (64, 96), REPARAM + ", attention"),
    _timm("fastvit_mci0", (64, 64), REPARAM),
    _timm("repghostnet_050", (64, 64), REPARAM),
    _timm("repvit_m0_9", (64, 64), REPARAM + ", fresh fuse()"),
    _timm("repvit_m1_1", (64, 96), REPARAM + ", fresh fuse()"),
    _timm("levit_128s", (64, 64), REPARAM + ", fresh fuse()", img_size=64),
    _timm("levit_conv_128s", (64, 64), REPARAM + ", fresh fuse()", img_size=64),
    _timm("efficientvit_m0", (64, 64), REPARAM, img_size=64),
    _timm("efficientvit_b0", (64, 64), "linear attention"),
    _timm("mobilenetv4_conv_small", (64, 64), "depthwise"),
    _timm("mobilenetv4_hybrid_medium", (64, 64), "depthwise, attention"),
    _timm("hgnetv2_b0", (64, 64), "learnable affine"),
    _timm("ghostnetv2_100", (64, 64), "ghost"),
    _timm("ghostnetv3_050", (64, 64), REPARAM),
    _timm("efficientvim_m1", (64, 64), REPARAM),
    _timm("iformer_t", (64, 64), REPARAM),
    _timm("lcnetv2_small", (64, 64), REPARAM),
    _timm("shvit_s1", (64, 64), REPARAM),
    _timm("tiny_vit_5m_224", (64, 64), REPARAM),
    _timm("nextvit_small", (64, 64), REPARAM),
    # classic CNNs
    _timm("resnet18", (64, 64), "classic"),
    _timm("resnet50d", (64, 80), "classic, ResNet-D"),
    _timm("resnext26ts", (64, 64), "grouped"),
    _timm("regnetx_002", (64, 64), "grouped"),
    _timm("regnety_002", (64, 64), "grouped, SE"),
    _timm("densenet121", (64, 64), "classic"),
    _timm("convnext_atto", (64, 64), "depthwise 7x7, LayerNorm, GELU"),
    _timm("efficientnet_b0", (64, 64), "depthwise, SE"),
    _timm("tf_efficientnet_b0", (64, 48), "depthwise, TF 'same' padding"),
    _timm("mobilenetv3_small_100", (64, 64), "depthwise, hard-swish"),
    _timm("mobilenetv3_large_100", (48, 64), "depthwise, hard-swish"),
    _timm("ghostnet_100", (64, 64), "ghost"),
    _timm("mixnet_s", (64, 64), "mixed depthwise kernels"),
    _timm("rexnet_100", (64, 64), "depthwise"),
    _timm("hrnet_w18_small", (64, 64), "multi-branch"),
    _timm("dla34", (64, 64), "aggregation"),
    _timm("ese_vovnet19b_dw", (64, 64), "depthwise"),
    _timm("resnet18", (64, 64), "dilated (output_stride 8)", name="resnet18_os8", output_stride=8),
    _timm("resnet18", (64, 96), "list output (features_only)", name="resnet18_features", features_only=True,
          num_classes=None),
    _timm("convnext_atto", (64, 64), "list output (features_only)", name="convnext_atto_features",
          features_only=True, num_classes=None),
    # torchvision
    _tv("resnet18", (64, 64), "classic", name="tv_resnet18", num_classes=10),
    _tv("mobilenet_v2", (64, 64), "depthwise", name="tv_mobilenet_v2", num_classes=10),
    _tv("mobilenet_v3_small", (64, 96), "depthwise", name="tv_mobilenet_v3_small", num_classes=10),
    _tv("shufflenet_v2_x0_5", (64, 64), "channel shuffle", name="tv_shufflenet_v2_x0_5", num_classes=10),
    _tv("squeezenet1_1", (64, 64), "classic", name="tv_squeezenet1_1", num_classes=10),
    _tv("efficientnet_b0", (64, 64), "depthwise, SE", name="tv_efficientnet_b0", num_classes=10),
    _tv("regnet_y_400mf", (64, 64), "grouped, SE", name="tv_regnet_y_400mf", num_classes=10),
    _tv("mnasnet0_5", (64, 64), "depthwise", name="tv_mnasnet0_5", num_classes=10),
    _tv("googlenet", (64, 64), "inception", name="tv_googlenet", num_classes=10, aux_logits=False,
        init_weights=True),
    _tv("convnext_tiny", (64, 64), "depthwise 7x7, LayerNorm, GELU", name="tv_convnext_tiny", num_classes=10),
    _tv("deeplabv3_mobilenet_v3_large", (64, 96), "segmentation, dict output, dilated",
        name="tv_deeplabv3_mobilenet_v3_large_aux", num_classes=5, aux_loss=True, weights_backbone=None),
    _tv("fcn_resnet50", (64, 64), "segmentation, dict output, dilated", name="tv_fcn_resnet50_aux",
        num_classes=5, aux_loss=True, weights_backbone=None),
    _tv("lraspp_mobilenet_v3_large", (64, 64), "segmentation, dict output", name="tv_lraspp_mobilenet_v3_large",
        num_classes=5, weights_backbone=None),
]


def build(spec: ModelSpec) -> nn.Module:
    """The model, untrained (random init; no weights are downloaded)."""
    if spec.source == "timm":
        import timm  # only in the sweep's environment

        kwargs = {k: v for k, v in spec.kwargs.items() if not (k == "num_classes" and v is None)}
        return timm.create_model(spec.arch, pretrained=False, **kwargs)
    import torchvision  # only in the sweep's environment

    return torchvision.models.get_model(spec.arch, weights=None, **spec.kwargs)
