"""Nearest-neighbour indexes: exact backends agree, IVF/HNSW approach exact search, saved indexes
reload identically and refuse a different source array, and backend selection records its reasons."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedstore.errors import AnalysisError, FingerprintMismatch, StoreError
from embedstore.index import IndexSpec, array_fingerprint, backends, build_index, load_index, select_backend
from embedstore.index.torch_search import TorchFlatSearcher


def _vectors(seed: int, n: int = 500, dim: int = 16, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(dtype)


def _brute_force(gallery: np.ndarray, queries: np.ndarray, k: int, metric: str, normalize: bool):
    g, q = gallery.astype(np.float64), queries.astype(np.float64)
    if normalize:
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    scores = q @ g.T if metric == "ip" else -((q[:, None, :] - g[None, :, :]) ** 2).sum(axis=2)
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def _overlap(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact, strict=True)]))


@pytest.fixture
def no_accelerators(monkeypatch):
    """This machine as seen by backend selection, with faiss installed but no GPU anywhere."""
    monkeypatch.setattr(backends, "faiss_gpu_count", lambda: 0)
    monkeypatch.setattr(backends, "torch_cuda_available", lambda: False)


@pytest.mark.parametrize(("metric", "normalize"), [("ip", True), ("ip", False), ("l2", False), ("l2", True)])
def test_exact_faiss_and_numpy_backends_agree_with_brute_force(metric, normalize):
    gallery, queries = _vectors(0), _vectors(1, n=40)
    expected_scores, expected_ids = _brute_force(gallery, queries, 7, metric, normalize)
    for backend in ("faiss-cpu", "numpy"):
        index = build_index(gallery, "flat", metric=metric, normalize=normalize, backend=backend)
        scores, ids = index.search(queries, 7)
        assert index.backend == backend
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)
        assert scores.dtype == np.float32 and ids.dtype == np.int64


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_torch_searcher_matches_numpy(metric):
    gallery, queries = _vectors(2), _vectors(3, n=30)
    expected_scores, expected_ids = build_index(gallery, metric=metric, backend="numpy").search(queries, 5)
    prepared_gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    prepared_queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    # The torch-cuda backend's code, run on the CPU device this machine has.
    scores, ids = TorchFlatSearcher(prepared_gallery, metric, device="cpu").search(prepared_queries, 5)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_ivf_probing_every_cell_is_exact():
    gallery, queries = _vectors(4, n=800), _vectors(5, n=50)
    exact_scores, exact_ids = build_index(gallery).search(queries, 10)
    index = build_index(gallery, "ivf", nlist=8, nprobe=8)
    scores, ids = index.search(queries, 10)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-6)
    assert index.spec.params() == {"nlist": 8, "nprobe": 8}


def test_approximate_recall_rises_to_one_with_generous_parameters():
    gallery, queries = _vectors(6, n=2000, dim=32), _vectors(7, n=100, dim=32)
    _, exact_ids = build_index(gallery).search(queries, 10)
    stingy_ivf = _overlap(build_index(gallery, "ivf", nlist=32, nprobe=1).search(queries, 10)[1], exact_ids)
    generous_ivf = _overlap(build_index(gallery, "ivf", nlist=32, nprobe=24).search(queries, 10)[1], exact_ids)
    generous_hnsw = _overlap(build_index(gallery, "hnsw", ef_search=256).search(queries, 10)[1], exact_ids)
    assert stingy_ivf < 0.6
    assert generous_ivf >= 0.98
    assert generous_hnsw >= 0.98


def test_search_parameters_change_without_rebuilding_and_are_saved(tmp_path):
    gallery, queries = _vectors(22, n=800), _vectors(23, n=30)
    _, exact_ids = build_index(gallery).search(queries, 10)
    index = build_index(gallery, "ivf", nlist=8, nprobe=1)
    narrow = _overlap(index.search(queries, 10)[1], exact_ids)
    index.set_search_params(nprobe=8)
    np.testing.assert_array_equal(index.search(queries, 10)[1], exact_ids)
    assert narrow < 1.0
    reloaded = load_index(index.save(tmp_path / "ivf.index"))
    assert reloaded.spec.nprobe == 8
    np.testing.assert_array_equal(reloaded.search(queries, 10)[1], exact_ids)
    with pytest.raises(AnalysisError, match=r"nprobe \(9\) cannot exceed nlist \(8\)"):
        index.set_search_params(nprobe=9)
    with pytest.raises(AnalysisError, match="ef_search applies to hnsw indexes, this one is 'ivf'"):
        index.set_search_params(ef_search=64)


def test_default_ivf_parameters_are_resolved_for_the_index_size():
    index = build_index(_vectors(8, n=1000), "ivf")
    assert index.spec.params() == {"nlist": 25, "nprobe": 25}  # min(4*sqrt(1000), 1000 // 39)


@pytest.mark.parametrize(
    ("kind", "backend", "payload"),
    [
        ("flat", "faiss-cpu", "faiss"),
        ("ivf", "faiss-cpu", "faiss"),
        ("hnsw", "faiss-cpu", "faiss"),
        ("flat", "numpy", "npy"),
    ],
)
def test_saved_index_reloads_with_identical_results(tmp_path, kind, backend, payload):
    gallery, queries = _vectors(9, dtype=np.float16), _vectors(10, n=25)
    index = build_index(gallery, kind, nlist=10, nprobe=3, ef_search=24, backend=backend)
    path = index.save(tmp_path / "images.index")
    sidecar = json.loads((tmp_path / "images.index.json").read_text())
    assert sidecar["payload"] == payload and sidecar["built_with"] == backend
    assert (sidecar["dim"], sidecar["n"]) == (16, 500)
    assert sidecar["spec"]["kind"] == kind and sidecar["spec"]["normalize"] is True
    assert sidecar["source_fingerprint"] == array_fingerprint(gallery)
    reloaded = load_index(path, gallery, backend=backend)
    assert reloaded.spec == index.spec
    for got, expected in zip(reloaded.search(queries, 8), index.search(queries, 8), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_numpy_payload_loads_into_faiss_and_faiss_flat_payload_into_numpy(tmp_path):
    gallery, queries = _vectors(11), _vectors(12, n=10)
    expected = build_index(gallery, backend="numpy").search(queries, 5)
    build_index(gallery, backend="numpy").save(tmp_path / "a.index")
    build_index(gallery, backend="faiss-cpu").save(tmp_path / "b.index")
    into_faiss = load_index(tmp_path / "a.index", backend="faiss-cpu")
    into_numpy = load_index(tmp_path / "b.index", backend="numpy")
    for index in (into_faiss, into_numpy):
        scores, ids = index.search(queries, 5)
        np.testing.assert_array_equal(ids, expected[1])
        np.testing.assert_allclose(scores, expected[0], rtol=1e-5)


def test_loading_against_a_different_array_is_refused(tmp_path):
    gallery = _vectors(13)
    path = build_index(gallery, "hnsw").save(tmp_path / "g.index")
    changed = gallery.copy()
    changed[17, 3] += 1.0
    with pytest.raises(FingerprintMismatch, match="was built from array sha256:"):
        load_index(path, changed)
    with pytest.raises(FingerprintMismatch, match="built from a 500x16 array, not the given 499x16 one"):
        load_index(path, gallery[:-1])
    with pytest.raises(FingerprintMismatch, match="was built from array"):
        load_index(path, gallery.astype(np.float64))  # same values, different array
    with pytest.raises(FingerprintMismatch, match="was built from array"):
        load_index(path, fingerprint=array_fingerprint(changed))
    assert load_index(path, fingerprint=array_fingerprint(gallery)).n == 500


def test_missing_or_malformed_sidecar_is_a_store_error(tmp_path):
    path = build_index(_vectors(14)).save(tmp_path / "x.index")
    (tmp_path / "x.index").rename(tmp_path / "y.index")
    with pytest.raises(StoreError, match="index file .*x.index not found beside its sidecar"):
        load_index(path)
    with pytest.raises(StoreError, match="index sidecar .*y.index.json not found"):
        load_index(tmp_path / "y.index")
    (tmp_path / "y.index.json").write_text('{"format": 1, "payload": "faiss"')
    with pytest.raises(StoreError, match="is malformed"):
        load_index(tmp_path / "y.index")


def test_search_batches_give_the_same_neighbours():
    gallery, queries = _vectors(15), _vectors(16, n=37)
    for backend in ("faiss-cpu", "numpy"):
        index = build_index(gallery, backend=backend)
        whole_scores, whole_ids = index.search(queries, 4)
        for batch_size in (1, 5):
            scores, ids = index.search(queries, 4, batch_size=batch_size)
            np.testing.assert_array_equal(ids, whole_ids)
            # BLAS sums in a different order for a different number of rows: last-bit differences.
            np.testing.assert_allclose(scores, whole_scores, rtol=1e-6)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda index: index.search(_vectors(1, n=3), 501), "k=501 exceeds the 500 vectors in the index"),
        (lambda index: index.search(_vectors(1, n=3), 0), "k must be a positive integer"),
        (lambda index: index.search(_vectors(1, n=3, dim=8), 1), "queries have dimension 8, the index has 16"),
        (lambda index: index.search(np.full((2, 16), np.nan), 1), "queries row 0 is not finite"),
        (lambda index: index.search(np.zeros((2, 16)), 1), "queries row 0 has zero norm"),
        (lambda index: index.search(_vectors(1, n=3), 1, batch_size=0), "batch_size must be a positive integer"),
    ],
)
def test_search_errors(call, message):
    with pytest.raises(AnalysisError, match=message):
        call(build_index(_vectors(17)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "lsh"}, "kind must be one of flat, ivf, hnsw"),
        ({"metric": "cosine"}, "metric must be one of ip, l2"),
        ({"kind": "ivf", "nlist": 4, "nprobe": 5}, r"nprobe \(5\) cannot exceed nlist \(4\)"),
        ({"kind": "ivf", "nlist": 600}, r"nlist \(600\) cannot exceed the number of vectors \(500\)"),
        ({"kind": "hnsw", "hnsw_m": 0}, "hnsw_m must be a positive integer"),
        ({"device": "tpu"}, "device must be one of auto, cpu, cuda"),
        ({"backend": "annoy"}, "backend must be 'auto' or one of"),
    ],
)
def test_build_errors(kwargs, message):
    with pytest.raises(AnalysisError, match=message):
        build_index(_vectors(18), **kwargs)


def test_zero_vector_in_the_indexed_array_is_named():
    gallery = _vectors(19)
    gallery[42] = 0
    with pytest.raises(AnalysisError, match="vectors row 42 has zero norm"):
        build_index(gallery, backend="numpy")
    assert build_index(gallery, normalize=False, backend="numpy").n == 500


def test_index_bytes_are_reported():
    gallery = _vectors(20)
    assert build_index(gallery, backend="numpy").nbytes == 500 * 16 * 4
    assert build_index(gallery, backend="faiss-cpu").nbytes >= 500 * 16 * 4
    assert build_index(gallery, "hnsw").nbytes > build_index(gallery, backend="faiss-cpu").nbytes


def test_selection_on_a_cpu_machine_records_what_was_passed_over(no_accelerators):
    flat = select_backend("flat")
    assert flat.name == "faiss-cpu"
    assert (
        flat.note == "faiss-gpu: faiss sees no GPU (faiss.get_num_gpus() == 0); torch-cuda: torch.cuda is not available"
    )
    assert select_backend("hnsw", device="cpu").name == "faiss-cpu"
    with pytest.raises(AnalysisError, match="no backend can build a 'flat' index on device 'cuda'"):
        select_backend("flat", device="cuda")
    with pytest.raises(AnalysisError, match="backend 'faiss-gpu' cannot build a 'flat' index: faiss sees no GPU"):
        select_backend("flat", backend="faiss-gpu")
    with pytest.raises(AnalysisError, match="backend 'numpy' does not run on device 'cuda'"):
        select_backend("flat", device="cuda", backend="numpy")


def test_selection_with_gpus_prefers_them_and_says_when_hnsw_stays_on_the_cpu(monkeypatch):
    monkeypatch.setattr(backends, "faiss_gpu_count", lambda: 1)
    monkeypatch.setattr(backends, "torch_cuda_available", lambda: True)
    assert select_backend("flat") == backends.BackendChoice("faiss-gpu")
    assert select_backend("ivf").name == "faiss-gpu"
    hnsw = select_backend("hnsw")
    assert hnsw.name == "faiss-cpu"
    assert "faiss-gpu: FAISS has no GPU HNSW index" in hnsw.note
    monkeypatch.setattr(backends, "faiss_gpu_count", lambda: 0)
    assert select_backend("flat").name == "torch-cuda"
    with pytest.raises(AnalysisError, match="torch-cuda: torch-cuda does exact \\(flat\\) search only"):
        select_backend("ivf", device="cuda")


def test_without_faiss_exact_search_falls_back_to_numpy_and_says_so(monkeypatch, no_accelerators, tmp_path):
    saved = build_index(_vectors(21), backend="faiss-cpu").save(tmp_path / "f.index")
    monkeypatch.setattr(backends, "import_faiss", lambda: None)
    index = build_index(_vectors(21))
    assert index.backend == "numpy"
    assert "faiss-cpu: faiss is not installed" in index.backend_note
    with pytest.raises(AnalysisError, match="no backend can build a 'hnsw' index"):
        build_index(_vectors(21), "hnsw")
    with pytest.raises(StoreError, match="is a FAISS index file and faiss is not installed"):
        load_index(saved)


def test_spec_round_trips_through_its_dict_and_rejects_unknown_fields():
    spec = IndexSpec(kind="ivf", nlist=np.int64(16), nprobe=4)
    assert IndexSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert type(spec.nlist) is int
    with pytest.raises(AnalysisError, match="unknown index spec field"):
        IndexSpec.from_dict({**spec.to_dict(), "efSearch": 3})
