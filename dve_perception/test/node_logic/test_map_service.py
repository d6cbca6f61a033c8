"""The mapping node's logic: frames with and without TF, query requests, save/load/clear."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from dve_perception.frames import EmbeddingFrame
from dve_perception.mapping import EmbeddingMap, MapConfig
from dve_perception.node_logic import MapService
from dve_perception.settings.node_config import MappingNodeConfig

DIM = 16
K = np.array([[40.0, 0.0, 19.5], [0.0, 40.0, 9.5], [0.0, 0.0, 1.0]])


class FakeEncoder:
    """A fixed random unit vector per phrase (seeded by the phrase)."""

    def vector(self, text: str) -> torch.Tensor:
        v = torch.randn(DIM, generator=torch.Generator().manual_seed(sum(map(ord, text))))
        return v / v.norm()

    def encode(self, texts):
        return torch.stack([self.vector(t) for t in texts])


def _frame(encoder: FakeEncoder, left="a red mug", right="a table", stamp_ns=0) -> EmbeddingFrame:
    embedding = torch.empty(DIM, 20, 40)
    embedding[:, :, :20] = encoder.vector(left)[:, None, None]
    embedding[:, :, 20:] = encoder.vector(right)[:, None, None]
    return EmbeddingFrame(embedding, torch.full((20, 40), 1.012), K, stamp_ns, "cam")


def _service(tmp_path, **settings) -> MapService:
    config = MappingNodeConfig(
        map=MapConfig(embedding_dim=DIM), map_directory=str(tmp_path / "maps"), **settings
    )
    return MapService(EmbeddingMap(config=config.map), FakeEncoder(), config)


def test_a_frame_with_a_pose_is_fused(tmp_path):
    service = _service(tmp_path)
    outcome = service.integrate(_frame(FakeEncoder()), np.eye(4))
    assert outcome.ok and service.fused == 1 and len(service.emap) > 0


def test_a_frame_without_transform_is_dropped_counted_and_logged_once_per_period(tmp_path):
    service = _service(tmp_path, warn_period_s=60.0)
    outcomes = [
        service.integrate(_frame(FakeEncoder()), None, "map <- cam: no data") for _ in range(3)
    ]
    assert [o.ok for o in outcomes] == [False] * 3
    assert [o.should_log for o in outcomes] == [True, False, False]
    assert "no transform: map <- cam: no data" == outcomes[0].reason
    assert service.dropped["no transform"] == 3 and len(service.emap) == 0
    assert service.stats()["dropped (no transform)"] == 3


def test_a_frame_the_map_cannot_take_is_dropped_and_the_map_is_unchanged(tmp_path):
    service = _service(tmp_path)
    service.integrate(_frame(FakeEncoder()), np.eye(4))
    before = len(service.emap)
    wrong = EmbeddingFrame(torch.ones(DIM + 1, 20, 40), torch.ones(20, 40), K, 0, "cam")
    outcome = service.integrate(wrong, np.eye(4))
    assert not outcome.ok and outcome.reason.startswith("invalid frame:")
    assert len(service.emap) == before and service.dropped["invalid frame"] == 1


def test_only_frames_promised_unit_skip_normalisation(tmp_path):
    # Frames from other publishers are normalised whatever their message promises; the
    # pipeline's own frames (assume_unit) are trusted, and a frame breaking that is refused.
    service = _service(tmp_path)
    frame = _frame(FakeEncoder())
    scaled = EmbeddingFrame(frame.embedding * 3.0, frame.depth_m, K, 0, "cam")
    assert service.integrate(scaled, np.eye(4)).ok
    outcome = service.integrate(scaled, np.eye(4), assume_unit=True)
    assert not outcome.ok and "norm 3" in outcome.reason
    assert service.integrate(frame, np.eye(4), assume_unit=True).ok
    assert service.fused == 2


def test_a_query_finds_the_phrase_on_its_side_of_the_frame(tmp_path):
    service = _service(tmp_path)
    service.integrate(_frame(FakeEncoder()), np.eye(4))
    outcome = service.query("a red mug", ["a table"], 0, 0.0)
    assert outcome.success, outcome.message
    assert outcome.result.score_name == "relevancy" and outcome.result.threshold == 0.5
    assert outcome.result.clusters[0].centroid_m[0] < 0  # the left half of the image
    assert len(outcome.points_m) == len(outcome.scores) == len(service.emap)
    assert "1 match(es) for 'a red mug'" in outcome.message


def test_the_response_cloud_keeps_the_best_voxels_when_the_map_is_large(tmp_path):
    service = _service(tmp_path, cloud_max_points=30)
    service.integrate(_frame(FakeEncoder()), np.eye(4))
    outcome = service.query("a red mug", [], 3, 0.0)
    assert len(outcome.points_m) == 30
    full = outcome.result.scores
    assert outcome.scores.min() >= np.sort(full)[-30]
    assert (outcome.points_m[:, 0] < 0).all()  # all from the mug's side


@pytest.mark.parametrize(
    ("text", "negatives", "top_k", "threshold", "match"),
    [
        ("", [], 0, 0.0, "text is empty"),
        ("   ", [], 0, 0.0, "text is empty"),
        ("x" * 201, [], 0, 0.0, "at most 200"),
        ("a\x07mug", [], 0, 0.0, "control characters"),
        ("a mug", [""], 0, 0.0, "negative is empty"),
        ("a mug", ["n"] * 17, 0, 0.0, "at most 16 negatives"),
        ("a mug", "table", 0, 0.0, "list of phrases"),
        ("a mug", [], -1, 0.0, "top_k must be 0"),
        ("a mug", [], 101, 0.0, "top_k must be 0"),
        ("a mug", [], 1, 1.5, "threshold must be in"),
        ("a mug", [], 1, float("nan"), "threshold must be in"),
        ("a mug", ["a mug"], 1, 0.0, "also listed as a negative"),
        (None, [], 1, 0.0, "text must be a string"),
    ],
)
def test_malformed_query_requests_get_a_reason_not_an_exception(
    tmp_path, text, negatives, top_k, threshold, match
):
    service = _service(tmp_path)
    service.integrate(_frame(FakeEncoder()), np.eye(4))
    outcome = service.query(text, negatives, top_k, threshold)
    assert not outcome.success and outcome.result is None
    assert match in outcome.message


def test_a_query_on_an_empty_map_says_so(tmp_path):
    outcome = _service(tmp_path).query("a red mug", [], 0, 0.0)
    assert not outcome.success and "map is empty" in outcome.message


def test_save_then_load_restores_the_map_inside_the_map_directory(tmp_path):
    service = _service(tmp_path)
    service.integrate(_frame(FakeEncoder()), np.eye(4))
    saved = service.save("office.dvemap")
    assert saved.success and saved.path == (tmp_path / "maps" / "office.dvemap").resolve()
    count = len(service.emap)
    service.clear()
    assert len(service.emap) == 0
    loaded = service.load("office.dvemap")
    assert loaded.success and loaded.voxel_count == count == len(service.emap)
    assert service.query("a red mug", [], 1, 0.0).success


def test_a_loaded_map_is_scored_against_the_canonical_negatives_before_its_first_query(
    tmp_path, monkeypatch
):
    service = _service(tmp_path)
    service.integrate(_frame(FakeEncoder()), np.eye(4))
    plain = service.query("a red mug", ["a table"], 1, 0.0).result
    service.save("office.dvemap")
    assert service.load("office.dvemap").success
    storage = service.emap.storage
    assert storage.negatives is not None and not storage._changed[: len(storage)].any()
    rescored = []
    monkeypatch.setattr(storage, "_score_negatives", rescored.append)
    answer = service.query("a red mug", ["a table"], 1, 0.0).result
    assert rescored == []  # nothing left to score: the first query reads the map once
    np.testing.assert_array_equal(answer.relevancy, plain.relevancy)


def test_save_outside_the_map_directory_is_refused_and_writes_nothing(tmp_path):
    service = _service(tmp_path)
    service.integrate(_frame(FakeEncoder()), np.eye(4))
    outcome = service.save("../stolen.dvemap")
    assert not outcome.success and "outside the map directory" in outcome.message
    assert not (tmp_path / "stolen.dvemap").exists()


def test_a_failed_load_keeps_the_current_map(tmp_path):
    service = _service(tmp_path)
    service.integrate(_frame(FakeEncoder()), np.eye(4))
    before = len(service.emap)
    (tmp_path / "maps").mkdir(exist_ok=True)
    (tmp_path / "maps" / "broken.dvemap").write_bytes(b"PK\x03\x04 not really a map")
    for name in ("broken.dvemap", "missing.dvemap", "/etc/hostname"):
        outcome = service.load(name)
        assert not outcome.success and "current map kept" in outcome.message
        assert len(service.emap) == before


def test_a_map_of_another_embedding_size_is_not_loaded(tmp_path):
    other = EmbeddingMap(config=MapConfig(embedding_dim=DIM * 2))
    (tmp_path / "maps").mkdir()
    other.save(tmp_path / "maps" / "other.dvemap")
    service = _service(tmp_path)
    outcome = service.load("other.dvemap")
    assert not outcome.success and "32-d embeddings" in outcome.message


def test_start_up_loads_and_shutdown_saves_when_configured(tmp_path):
    first = _service(tmp_path, save_map_on_shutdown=True)
    assert first.on_start() is None
    first.integrate(_frame(FakeEncoder()), np.eye(4))
    saved = first.on_shutdown()
    assert saved.success and saved.path.name == "map.dvemap"
    second = _service(tmp_path, load_map_on_start="map.dvemap")
    loaded = second.on_start()
    assert loaded.success and len(second.emap) == len(first.emap)


def test_shutdown_does_not_overwrite_a_saved_map_with_an_empty_one(tmp_path):
    service = _service(tmp_path, save_map_on_shutdown=True)
    assert service.on_shutdown().path is None
    assert not (tmp_path / "maps" / "map.dvemap").exists()


def test_the_map_cloud_is_capped_and_coloured(tmp_path):
    service = _service(tmp_path, cloud_max_points=25)
    service.integrate(_frame(FakeEncoder()), np.eye(4))
    points, rgb = service.cloud()
    assert points.shape == (25, 3) and rgb.shape == (25, 3) and rgb.dtype == np.uint8


def test_queries_and_saves_while_frames_are_fused_never_fail(tmp_path):
    service = _service(tmp_path)
    encoder = FakeEncoder()
    errors: list[BaseException] = []

    def fuse() -> None:
        try:
            for i in range(20):
                pose = np.eye(4)
                pose[0, 3] = 0.05 * i
                assert service.integrate(_frame(encoder, stamp_ns=i), pose).ok
        except BaseException as err:  # surfaced below
            errors.append(err)

    worker = threading.Thread(target=fuse)
    worker.start()
    outcomes = []
    while worker.is_alive():
        outcomes.append(service.query("a red mug", [], 2, 0.0))
        outcomes.append(service.save("live.dvemap"))
    worker.join()
    assert not errors
    assert all(o.success or "map is empty" in o.message for o in outcomes)
    assert EmbeddingMap.load(tmp_path / "maps" / "live.dvemap") is not None


def _colours_by_point(points: np.ndarray, rgb: np.ndarray) -> dict[tuple, tuple]:
    return {tuple(p.round(4)): tuple(c) for p, c in zip(points, rgb, strict=True)}


def test_the_map_cloud_keeps_its_colours_while_the_map_grows_less_than_twofold(tmp_path):
    service = _service(tmp_path)
    encoder = FakeEncoder()
    service.integrate(_frame(encoder), np.eye(4))
    first = _colours_by_point(*service.cloud())
    moved = np.eye(4)
    moved[0, 3] = 0.2  # a few new voxels of a third phrase beside the old ones
    service.integrate(_frame(encoder, left="a lamp", right="a table"), moved)
    assert len(service.emap) < 2 * len(first)
    second = _colours_by_point(*service.cloud())
    unchanged = [p for p in first if p in second and first[p] == second[p]]
    # A refit on the grown map (a new phrase, new variance) would recolour the old voxels;
    # the kept basis leaves every voxel whose feature did not change with its colour.
    untouched = [p for p in first if p[0] < -0.35]  # the moved frame starts near x = -0.3
    assert untouched and all(p in unchanged for p in untouched)


def test_the_colour_basis_is_refitted_after_clear(tmp_path):
    service = _service(tmp_path)
    encoder = FakeEncoder()
    service.integrate(_frame(encoder), np.eye(4))
    service.cloud()
    service.clear()
    service.integrate(_frame(encoder, left="a lamp", right="a sofa"), np.eye(4))
    points, rgb = service.cloud()
    fresh = service.emap.colors("pca")  # a basis fitted on the new content
    np.testing.assert_array_equal(rgb, fresh[: len(rgb)])


def test_pca_cloud_takes_points_and_colours_of_one_map_state():
    emap = EmbeddingMap(config=MapConfig(embedding_dim=DIM))
    emap.integrate(_frame(FakeEncoder()).embedding, torch.full((20, 40), 1.012), K, np.eye(4))
    points, rgb, basis = emap.pca_cloud()
    assert len(points) == len(rgb) == len(emap) and basis is not None
    again, rgb_again, same = emap.pca_cloud(basis)
    assert same is basis
    np.testing.assert_array_equal(rgb, rgb_again)
