"""Compliance example for gullyseg:screeningreport: a 16-tile index, two tiles decided with the journal."""

import dataset_builder

from gullyseg.processing.engine import dataset, screening


def parameters(tmp_path, scene_factory):
    scene = scene_factory("screening_example", width=256, height=256, seed=4)
    root = tmp_path / "dataset"
    dataset_builder.build_dataset(root, scene, tile_size=64)
    ids = sorted(r["tile_id"] for r in dataset.read_index(str(root / dataset.INDEX_NAME))[0])
    dataset.update_index(str(root / dataset.INDEX_NAME), {ids[0]: {"status": "keep"}, ids[1]: {"status": "reject"}})
    screening.append_log(root, [("2026-11-27T10:00:00+00:00", "s1", ids[0], "unscreened", "keep", "decide"),
                                ("2026-11-27T10:00:04+00:00", "s1", ids[1], "unscreened", "reject", "decide")])
    return {"TILES": str(root / dataset.INDEX_NAME), "OUTPUT_CSV": str(tmp_path / "report.csv"),
            "OUTPUT_REPORT": str(tmp_path / "report.json")}


def check(results, tmp_path):
    assert (results["TOTAL"], results["KEPT"], results["REJECTED"], results["REMAINING"]) == (16, 1, 1, 14)
    assert results["DECISIONS"] == 2 and results["RATE_PER_MINUTE"] == 30.0  # 2 decisions in 4 s
    assert (tmp_path / "report.csv").read_text().count("\n") == 3
