"""Tile scoring for the screening queue: predicted gully share per tile (worker-thread code).

Runs the same ONNX engine as inference (``engine.inference.score_tiles``: the model's band
order, scaling, normalisation and threshold) over each tile's GeoTIFF; plain numpy/GDAL/engine,
never a layer or a widget, so it can run inside an ``EngineTask``.
"""

import os


def score_tiles(model_path, items, feedback, batch_size=8):
    """items: [(tile_id, tile image path)] -> {tile_id: predicted gully share 0..1}."""
    from ..processing.engine import inference

    by_path = {os.path.abspath(str(path)): tile_id for tile_id, path in items}
    results = inference.score_tiles(model_path, [path for _, path in items], batch_size=batch_size,
                                    feedback=feedback)
    return {by_path[os.path.abspath(r["path"])]: float(r["gully_share"]) for r in results}
