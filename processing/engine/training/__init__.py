"""Training gully segmentation models (gullyseg:trainmodel, gullyseg:comparemodels).

Modules: ``deps`` (optional torch/smp, imported lazily), ``models`` (architectures and encoders
from segmentation-models-pytorch, export check), ``data`` (the split dataset folder, lazy tile
reads), ``loop`` (the training loop on tensors: no GDAL), ``export`` (ONNX + metadata + check),
``report`` (HTML/CSV), ``trainer`` (the trainmodel engine), ``compare`` (comparemodels).
Importing this package imports neither torch nor smp: the provider loads without them.
"""
