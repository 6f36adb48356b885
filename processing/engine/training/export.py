"""ONNX export of a trained network with the metadata gullyseg:segment reads, then a check.

The exported graph is the network followed by a softmax: output ``[N, 2, H, W]`` probabilities
(background, gully), input ``[N, C, H, W]`` float32, opset 17, batch and size dynamic where the
architecture allows (else the tile size is fixed). Metadata (docs/models.md): Deepness keys
(model_type, class_names, resolution, tile_size, tiles_overlap, standardization_mean/std,
seg_thresh), GullySeg's key (input_max, activation none, gully_class 1, bands) and the training
record under ``gullyseg_training``. Written with onnx_model.write_metadata (which loads the result
back with every GullySeg check). Then onnxruntime runs the file on val tiles and the gully
probabilities must equal PyTorch's within MAX_PROB_DIFF, else nothing is written.
"""

import json
import os
import uuid
from typing import Optional

import numpy as np

from .. import onnx_model
from ..errors import GullySegError
from . import models

TRAINING_KEY = "gullyseg_training"
MAX_PROB_DIFF = 1e-4
OVERLAP_PERCENT = 25
THRESHOLD = 0.5


def metadata_updates(spec, record) -> dict:
    return {
        "model_type": json.dumps("Segmentor"),
        "class_names": {str(i): n for i, n in enumerate(models.CLASS_NAMES)},
        "resolution": spec.resolution_cm,
        "tile_size": int(spec.tile_size),
        "tiles_overlap": OVERLAP_PERCENT,
        "standardization_mean": list(spec.mean),
        "standardization_std": list(spec.std),
        "seg_thresh": THRESHOLD,
        onnx_model.GULLYSEG_KEY: onnx_model.gullyseg_metadata(
            input_max=spec.input_max, activation="none", gully_class=1, bands=list(range(1, spec.bands + 1))),
        TRAINING_KEY: json.dumps(record, sort_keys=True, default=_json_default),
    }


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)


def read_training_record(path) -> Optional[dict]:
    """The training record of a model written by trainmodel (None for other models)."""
    meta = onnx_model.read_metadata(path)
    if TRAINING_KEY not in meta:
        return None
    try:
        return json.loads(meta[TRAINING_KEY])
    except ValueError:
        return None


def torch_probabilities(net, x) -> np.ndarray:
    """PyTorch's softmax probabilities (numpy [N, 2, H, W]) of a normalised float32 batch."""
    import torch

    net.eval()
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(np.ascontiguousarray(x))), dim=1).numpy()


def export_model(net, target, spec, record, check_batch, dynamic=True, overwrite=True, feedback=None) -> tuple:
    """Export ``net`` (CPU, eval mode) to ``target`` with metadata; verify against PyTorch on
    ``check_batch`` (normalised float32 [N, C, H, W]). Returns (max abs difference, dynamic)."""
    import onnx

    target = os.path.abspath(str(target))
    if os.path.exists(target) and not overwrite:
        raise GullySegError(f"OUTPUT_MODEL: '{target}' already exists.")
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(target)}.partial-{uuid.uuid4().hex[:8]}.onnx")
    net = net.to("cpu").eval()
    try:
        models.export_to(net, tmp, spec.bands, spec.tile_size, dynamic=dynamic)
        proto = onnx.load(tmp)
        proto.producer_name = "gullyseg trainmodel"
        proto.doc_string = (f"{record.get('architecture_label', '')} / {record.get('encoder', '')} trained by "
                            "GullySeg (gullyseg:trainmodel)")
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        proto = None
        onnx_model.write_metadata(tmp, metadata_updates(spec, record))
        diff = verify(tmp, net, check_batch)
        if not diff < MAX_PROB_DIFF:
            raise GullySegError(
                f"OUTPUT_MODEL: the exported ONNX model differs from the PyTorch model by {diff:.3g} in probability "
                f"(allowed {MAX_PROB_DIFF:g}) on {len(check_batch)} val tiles; the export is not trustworthy and "
                "was not written.")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if feedback is not None:
        feedback.info(f"ONNX model written to {target}: max abs probability difference to PyTorch {diff:.2e} on "
                      f"{len(check_batch)} val tiles (opset {models.ONNX_OPSET}, "
                      f"{'dynamic' if dynamic else 'fixed'} size).")
    return diff, dynamic


def verify(path, net, batch) -> float:
    """Max abs difference between onnxruntime's and PyTorch's probabilities on ``batch``."""
    info = onnx_model.load_model(path, threads=1, providers=[onnx_model.CPU], probe=False)
    got = info.session.run([info.output_name], {info.input_name: np.ascontiguousarray(batch, np.float32)})[0]
    want = torch_probabilities(net, batch)
    return float(np.max(np.abs(got - want)))
