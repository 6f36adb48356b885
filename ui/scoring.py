"""Tile scoring for the screening queue: predicted gully share per tile (worker-thread code).

Runs the same ONNX engine as inference over each tile's GeoTIFF; plain numpy/GDAL/engine,
never a layer or a widget, so it can run inside an ``EngineTask``.
"""


def score_tiles(model_path, items, feedback):
    """items: [(tile_id, tile GeoTIFF path)] -> {tile_id: predicted gully share 0..1}."""
    from ..processing.engine import inference

    return inference.score_tiles(model_path, items, feedback=feedback)
