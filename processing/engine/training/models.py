"""The architectures and encoders trainmodel offers, built with segmentation-models-pytorch.

Nothing here downloads at import or by default: ENCODER_WEIGHTS is ``none`` unless the user asks
for ``imagenet`` (smp's own download or local cache) or gives a local weights file.
Every (architecture, encoder, tile size) is checked before training by building the network and
exporting it to ONNX at the tile size (``check_exportable``): what cannot be exported is refused
with the exporter's reason, so no one trains for an hour a model that cannot be deployed.
"""

import io
import os
import warnings
from typing import TYPE_CHECKING

from .deps import require_torch

if TYPE_CHECKING:
    import torch

# key (parameter value) -> (smp architecture name, label)
ARCHITECTURES = {
    "unet": ("Unet", "U-Net"),
    "unetplusplus": ("UnetPlusPlus", "U-Net++"),
    "deeplabv3plus": ("DeepLabV3Plus", "DeepLabV3+"),
    "fpn": ("FPN", "FPN"),
    "pspnet": ("PSPNet", "PSPNet"),
    "linknet": ("Linknet", "LinkNet"),
    "manet": ("MAnet", "MA-Net"),
    "segformer": ("Segformer", "SegFormer"),
}
ARCHITECTURE_KEYS = tuple(ARCHITECTURES)
ENCODERS = (
    "resnet18", "resnet34", "resnet50",
    "efficientnet-b0", "efficientnet-b1", "efficientnet-b2", "efficientnet-b3",
    "mobilenet_v2",
    "mit_b0", "mit_b1", "mit_b2",
)
DEFAULT_ARCHITECTURE = "unet"
DEFAULT_ENCODER = "mobilenet_v2"  # light: a U-Net has 6.6 M parameters (26 MB), 14.3 M with resnet18
WEIGHTS_NONE = "none"
WEIGHTS_IMAGENET = "imagenet"
WEIGHT_CHOICES = (WEIGHTS_NONE, WEIGHTS_IMAGENET)
NUM_CLASSES = 2  # background, gully (softmax over two channels)
CLASS_NAMES = ("background", "gully")
ONNX_OPSET = 17


def _error(message):
    from ..errors import GullySegError

    return GullySegError(message)


def label(arch) -> str:
    return ARCHITECTURES[arch][1]


def parse_architecture(value) -> str:
    key = str(value).strip().lower().replace("-", "").replace("_", "").replace("+", "plus")
    aliases = {"unetpp": "unetplusplus", "deeplabv3p": "deeplabv3plus", "deeplab": "deeplabv3plus"}
    key = aliases.get(key, key)
    if key not in ARCHITECTURES:
        raise _error(f"ARCHITECTURE: '{value}' is not offered; choose one of {', '.join(ARCHITECTURE_KEYS)}.")
    return key


def parse_encoder(value) -> str:
    name = str(value).strip().lower()
    if name not in ENCODERS:
        raise _error(f"ENCODER: '{value}' is not offered; choose one of {', '.join(ENCODERS)}.")
    return name


def build(arch, encoder, in_channels, weights=WEIGHTS_NONE) -> "torch.nn.Module":
    """The smp network (logits, NUM_CLASSES channels). ``weights``: none, imagenet or a file path."""
    torch, smp = require_torch()
    arch = parse_architecture(arch)
    encoder = parse_encoder(encoder)
    weights = weights or WEIGHTS_NONE
    smp_weights = WEIGHTS_IMAGENET if weights == WEIGHTS_IMAGENET else None
    cls = getattr(smp, ARCHITECTURES[arch][0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = cls(encoder_name=encoder, encoder_weights=smp_weights, in_channels=int(in_channels),
                      classes=NUM_CLASSES)
    except Exception as exc:  # noqa: BLE001 - smp raises ValueError/KeyError/RuntimeError/OSError/HF errors
        if smp_weights:
            raise _error(
                f"ENCODER_WEIGHTS: the imagenet weights of '{encoder}' could not be loaded from the local cache or "
                f"downloaded ({type(exc).__name__}: {str(exc)[:300]}). Offline, use ENCODER_WEIGHTS=none (trains "
                "from scratch; the default) or give a local weights file."
            ) from None
        raise _error(
            f"ARCHITECTURE: {label(arch)} cannot be built with the encoder '{encoder}' and {in_channels} input "
            f"bands: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    if weights not in WEIGHT_CHOICES:
        load_encoder_weights(net, weights)
    return net


def load_encoder_weights(net, path) -> tuple:
    """Load a local encoder weights file (a state dict saved with torch.save) into ``net.encoder``."""
    torch, _ = require_torch()
    if not os.path.isfile(str(path)):
        raise _error(f"ENCODER_WEIGHTS: '{path}' is neither 'none', 'imagenet' nor an existing weights file.")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds
        raise _error(f"ENCODER_WEIGHTS: cannot read the weights file '{path}': {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise _error(f"ENCODER_WEIGHTS: '{path}' does not hold a state dict of encoder weights.")
    own = net.encoder.state_dict()
    state = {k[len("encoder."):] if k.startswith("encoder.") else k: v for k, v in state.items()}
    usable = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not usable or len(usable) < len(own) // 2:
        raise _error(
            f"ENCODER_WEIGHTS: '{path}' matches only {len(usable)} of the encoder's {len(own)} tensors; is it a "
            "state dict of the same encoder (and band count)?"
        )
    net.encoder.load_state_dict(usable, strict=False)
    return len(usable), len(own)


class WithSoftmax:
    """The exported graph: the network followed by a softmax over the classes (probabilities out)."""

    @staticmethod
    def wrap(net):
        torch, _ = require_torch()

        class Exported(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                return torch.softmax(self.net(x), dim=1)

        return Exported()


def export_to(net, target, in_channels, tile, dynamic=True) -> bool:
    """torch.onnx.export of ``net`` (+ softmax) to a path or file object; returns ``dynamic`` used."""
    torch, _ = require_torch()
    wrapped = WithSoftmax.wrap(net).eval()
    x = torch.zeros(1, int(in_channels), int(tile), int(tile))
    axes = {0: "N", 2: "H", 3: "W"} if dynamic else {0: "N"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped, (x,), target, input_names=["input"], output_names=["output"], opset_version=ONNX_OPSET,
            dynamic_axes={"input": axes, "output": axes}, dynamo=False,
        )
    return dynamic


def _reason(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {(text[0] if text else '')[:300]}"


def check_exportable(arch, encoder, in_channels, tile) -> tuple:
    """Refuse (GullySegError with the reason) a network that cannot be trained and exported at ``tile`` px.

    Builds the network without weights, runs it at the tile size and exports it to ONNX in memory,
    with dynamic batch and size, else with dynamic batch and the fixed tile size.
    Returns (number of parameters, dynamic size possible).
    """
    torch, _ = require_torch()
    arch = parse_architecture(arch)
    encoder = parse_encoder(encoder)
    what = f"ARCHITECTURE: {label(arch)} with encoder {encoder} at {tile} x {tile} px"
    if int(tile) % 32:
        raise _error(f"{what} is refused: the tile size must be a multiple of 32 (the encoders' output stride).")
    net = build(arch, encoder, in_channels)
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, int(in_channels), int(tile), int(tile)))
        if tuple(out.shape) != (2, NUM_CLASSES, int(tile), int(tile)):
            raise ValueError(f"output shape {tuple(out.shape)} is not the input's size")
    except Exception as exc:  # noqa: BLE001 - any failure of the forward pass refuses the model
        raise _error(f"{what} is refused: it cannot run at this size ({_reason(exc)}).") from None
    dynamic = True
    for dynamic in (True, False):
        try:
            export_to(net, io.BytesIO(), in_channels, tile, dynamic=dynamic)
            break
        except Exception as exc:  # noqa: BLE001 - the exporter's reason is reported
            if not dynamic:
                raise _error(
                    f"{what} is refused: it cannot be exported to ONNX (opset {ONNX_OPSET}) at this size, so it "
                    f"could not be deployed with gullyseg:segment ({_reason(exc)}). Choose another architecture "
                    "or tile size."
                ) from None
    return sum(p.numel() for p in net.parameters()), dynamic
