"""micro_fast.data: formats (round trips, malformed input), synthetic data, the BPR sampler."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from micro_fast import CSRGraph
from micro_fast.data import (
    PRESETS,
    BPRSampler,
    Dataset,
    from_spec,
    load,
    load_micro,
    load_mmrec,
    save_micro,
    save_mmrec,
    synthetic,
)
from micro_fast.data import sampler as sampler_mod
from micro_fast.data.dataset import interactions

REAL = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def tiny() -> Dataset:
    return synthetic("tiny", seed=3)


def assert_same(a: Dataset, b: Dataset) -> None:
    assert (a.n_users, a.n_items) == (b.n_users, b.n_items)
    for s in ("train", "valid", "test"):
        ga, gb = a.split(s), b.split(s)
        assert torch.equal(ga.indptr, gb.indptr) and torch.equal(ga.indices, gb.indices), s
        assert gb.values.dtype == torch.float32 and bool((gb.values == 1).all())
    assert list(a.features) == list(b.features)
    for m in a.features:
        assert b.features[m].dtype == torch.float32
        assert torch.equal(a.features[m], b.features[m]), m


def write_micro(root: Path, train, val=None, test=None, feats: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for fname, obj in (("train.json", train), ("val.json", val or {}), ("test.json", test or {})):
        text = obj if isinstance(obj, str) else json.dumps(obj)
        (root / fname).write_text(text)
    for m, a in (feats or {}).items():
        np.save(root / f"{m}_feat.npy", a)
    return root


def write_inter(root: Path, text: str, name: str = "toy", feats: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.inter").write_text(text)
    for m, a in (feats or {}).items():
        np.save(root / f"{m}_feat.npy", a)
    return root


# --- round trips --------------------------------------------------------------------------------


def test_micro_round_trip(tiny, tmp_path):
    save_micro(tiny, tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "image_feat.npy", "test.json", "text_feat.npy", "train.json", "val.json"]
    assert_same(tiny, load_micro(tmp_path / "d"))
    back = load(tmp_path / "d")
    assert back.meta["format"] == "micro" and back.name == "d"
    assert_same(tiny, back)


def test_mmrec_round_trip(tiny, tmp_path):
    path = save_mmrec(tiny, tmp_path / "toy", name="toy")
    assert path.name == "toy.inter"
    assert path.read_text().splitlines()[0] == "userID\titemID\trating\ttimestamp\tx_label"
    assert_same(tiny, load_mmrec(tmp_path / "toy"))
    back = load(tmp_path / "toy", "auto")
    assert back.meta["format"] == "mmrec"
    assert_same(tiny, back)
    assert_same(tiny, load(path))  # the .inter file itself


def test_round_trip_without_features_keeps_users(tmp_path):
    # users 3 and 4 have nothing at all: the json keys keep them
    tr = interactions(np.array([0, 1, 2]), np.array([1, 0, 2]), 5, 3)
    empty = interactions(np.array([], np.int64), np.array([], np.int64), 5, 3)
    ds = Dataset("x", 5, 3, tr, empty, empty)
    with pytest.warns(UserWarning, match="2 of 5 users"):
        assert_same(ds, load_micro(save_micro(ds, tmp_path / "x")))


def test_load_format_argument(tiny, tmp_path):
    save_micro(tiny, tmp_path / "a")
    assert_same(tiny, load(tmp_path / "a", format="micro"))
    with pytest.raises(ValueError, match="format must be"):
        load(tmp_path / "a", format="csv")
    with pytest.raises(FileNotFoundError, match="no dataset found"):
        load(tmp_path / "nothing-here")


def test_merges_repeats_and_orders_modalities(tmp_path):
    feats = {"zeta": np.ones((4, 2), np.float16), "audio": np.zeros((4, 3), np.float64),
             "image": np.ones((4, 5), np.float32)}
    root = write_micro(tmp_path / "d", '{"0": [2, 1, 2], "1": [0], "0": [3]}', {"1": [3]}, {},
                       feats)
    ds = load_micro(root)
    assert list(ds.features) == ["image", "audio", "zeta"]
    assert all(f.dtype == torch.float32 for f in ds.features.values())
    assert ds.train.indices.tolist() == [1, 2, 3, 0] and ds.train.indptr.tolist() == [0, 3, 4]
    assert ds.n_items == 4  # from the feature rows: item 3 is the largest id anyway


def test_feature_rows_beyond_ids_set_n_items(tmp_path):
    root = write_micro(tmp_path / "d", {"0": [0], "1": [1]}, feats={"image": np.ones((9, 2))})
    assert load_micro(root).n_items == 9


def test_lattice_5core_subfolder(tiny, tmp_path):
    save_micro(tiny, tmp_path / "d" / "5-core")
    for f in (tmp_path / "d" / "5-core").glob("*.npy"):
        f.rename(tmp_path / "d" / f.name)
    assert_same(tiny, load(tmp_path / "d"))


# --- malformed input ----------------------------------------------------------------------------

GOOD = {"0": [0, 1], "1": [2]}


@pytest.mark.parametrize("train,match", [
    ('{"0": [0, 1', "bad JSON"),
    ('[[0, 1]]', "expected a JSON object"),
    ('{"0": 3}', "must be a list"),
    ('{"a": [1]}', "user id 'a' is not a non-negative integer"),
    ('{"-1": [1]}', "user id '-1'"),
    ('{"0": [1.5]}', "item id 1.5 is not an integer"),
    ('{"0": ["1"]}', "item id '1' is not an integer"),
    ('{"0": [true]}', "item id True is not an integer"),
    ('{"0": [-2]}', "negative item id -2"),
])
def test_micro_malformed_json(tmp_path, train, match):
    root = write_micro(tmp_path / "d", train)
    with pytest.raises(ValueError, match=match) as err:
        load_micro(root)
    assert "train.json" in str(err.value)


def test_micro_missing_file(tmp_path):
    root = write_micro(tmp_path / "d", GOOD)
    (root / "test.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"test\.json: missing file"):
        load_micro(root)
    with pytest.raises(FileNotFoundError, match="missing dataset folder"):
        load_micro(tmp_path / "absent")


def test_pair_in_two_splits(tmp_path):
    root = write_micro(tmp_path / "d", GOOD, {}, {"1": [2]})
    with pytest.raises(ValueError, match=r"train\.json and .*test\.json: 1 \(user, item\) pairs "
                                         r"are in both train and test, e.g. user 1 item 2"):
        load_micro(root)
    inter = "userID\titemID\tx_label\n0\t1\t0\n0\t1\t1\n"
    with pytest.raises(ValueError, match=r"toy\.inter \(x_label 0 and 1\).*both train and valid"):
        load_mmrec(write_inter(tmp_path / "m", inter))


@pytest.mark.parametrize("feat,match", [
    (np.ones((2, 4)), r"image_feat\.npy: has 2 rows but the interactions use item id 2"),
    (np.ones(3), "must be 2-D .* ndim 1"),
    (np.ones((3, 2, 2)), "ndim 3"),
    (np.array([[1.0, np.nan], [0, 0], [0, 0]]), "NaN or inf"),
    (np.array([[1.0, np.inf], [0, 0], [0, 0]], np.float16), "NaN or inf"),
    (np.array([["a", "b"]] * 3), "must be numeric"),
])
def test_bad_features(tmp_path, feat, match):
    root = write_micro(tmp_path / "d", GOOD, feats={"image": feat})
    with pytest.raises(ValueError, match=match) as err:
        load_micro(root)
    assert "image_feat.npy" in str(err.value)


def test_feature_files_disagree_or_unreadable(tmp_path):
    root = write_micro(tmp_path / "d", GOOD, feats={"image": np.ones((3, 2)),
                                                    "text": np.ones((4, 2))})
    with pytest.raises(ValueError, match=r"image_feat\.npy: has 3 rows but .*text_feat\.npy has 4"):
        load_micro(root)
    root = write_micro(tmp_path / "e", GOOD)
    (root / "text_feat.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match=r"text_feat\.npy: not a readable \.npy"):
        load_micro(root)


@pytest.mark.parametrize("text,match", [
    ("user\titemID\tx_label\n0\t1\t0\n", r"missing columns \['userID'\]"),
    ("userID\titemID\n0\t1\n", r"missing columns \['x_label'\]"),
    ("userID\titemID\tx_label\n0\t1\t3\n", "bad x_label value 3 on data row 1"),
    ("userID\titemID\tx_label\n0\t1\t0\n1\t1\t-1\n", "bad x_label value -1 on data row 2"),
    ("userID\titemID\tx_label\n0\tx\t0\n", "bad data line"),
    ("userID\titemID\tx_label\n0\t1.5\t0\n", "bad data line"),
    ("userID\titemID\tx_label\n0\t1\n", "bad data line"),
    ("userID\titemID\tx_label\n-3\t1\t0\n", "negative userID -3"),
    ("userID\titemID\tx_label\n0\t-1\t0\n", "negative itemID -1"),
])
def test_mmrec_malformed(tmp_path, text, match):
    root = write_inter(tmp_path / "toy", text)
    with pytest.raises(ValueError, match=match) as err:
        load_mmrec(root)
    assert "toy.inter" in str(err.value)


def test_mmrec_file_lookup_and_extra_columns(tmp_path):
    text = "rating\titemID\tuserID\tx_label\tts\n5\t1\t0\t0\t9\n5\t2\t0\t2\t9\n5\t0\t1\t0\t9\n"
    root = write_inter(tmp_path / "folder", text, name="other")
    ds = load_mmrec(root)  # the only .inter file
    assert ds.name == "other" and (ds.n_users, ds.n_items) == (2, 3)
    assert ds.train.indices.tolist() == [1, 0] and ds.test.indices.tolist() == [2]
    (root / "second.inter").write_text(text)
    with pytest.raises(FileNotFoundError, match=r"folder\.inter: missing file \(found other"):
        load_mmrec(root)
    assert load_mmrec(root, "second").name == "second"
    with pytest.raises(ValueError, match=r"image_feat\.npy: has 2 rows"):
        np.save(root / "image_feat.npy", np.ones((2, 2)))
        load_mmrec(root, "other")


def test_users_without_train_items(tmp_path):
    root = write_micro(tmp_path / "d", {"0": [0], "1": [], "2": [1]}, {"1": [2], "3": [0]},
                       {"1": [1]})
    with pytest.warns(UserWarning, match="2 of 4 users have no train item"):
        ds = load_micro(root)
    assert ds.n_users == 4 and ds.train_users.tolist() == [0, 2]
    assert ds.valid.degrees().tolist() == [0, 1, 0, 1]
    assert ds.test.degrees().tolist() == [0, 1, 0, 0]
    sampler = BPRSampler(ds.train, batch_size=8)
    assert set(sampler.sample()[0].tolist()) <= {0, 2}


def test_dataset_validate_and_with_features(tiny):
    other = tiny.with_features({"video": torch.zeros(tiny.n_items, 3),
                                "image": torch.ones(tiny.n_items, 2, dtype=torch.float64)})
    assert list(other.features) == ["image", "video"] and other.train is tiny.train
    assert other.features["image"].dtype == torch.float32 and list(tiny.features) != []
    with pytest.raises(ValueError, match=r"features\['text'\] has 5 rows"):
        tiny.with_features({"text": torch.zeros(5, 3)})
    with pytest.raises(ValueError, match="NaN or inf"):
        tiny.with_features({"text": torch.full((tiny.n_items, 3), float("nan"))})
    bad = Dataset("b", tiny.n_users, tiny.n_items, tiny.train, tiny.train, tiny.test)
    with pytest.raises(ValueError, match="in both train and valid"):
        bad.validate()
    bad = Dataset("b", tiny.n_users + 1, tiny.n_items, tiny.train, tiny.valid, tiny.test)
    with pytest.raises(ValueError, match="train has shape"):
        bad.validate()
    users, items = tiny.train_pairs()
    assert users.numel() == items.numel() == tiny.n_train
    s = tiny.summary()
    assert s["n_train"] + s["n_valid"] + s["n_test"] == s["n_interactions"]


@pytest.mark.skipif(not (REAL / "tiktok" / "train.json").exists(), reason="no real data")
def test_real_tiktok():
    with pytest.warns(UserWarning, match="10 of 9308 users"):
        ds = load(REAL / "tiktok")
    s = ds.summary()
    assert (s["n_users"], s["n_items"], s["n_train"], s["n_valid"], s["n_test"]) == (
        9308, 6710, 59541, 3051, 6130)
    assert list(ds.features) == ["image", "audio"] and s["items_without_train"] == 465


# --- synthetic ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_synthetic_sizes(size):
    n_users, n_items, n_inter, dims = PRESETS[size]
    ds = synthetic(size)
    s = ds.summary()
    assert (s["n_users"], s["n_items"], s["n_interactions"]) == (n_users, n_items, n_inter)
    assert s["features"] == dims and s["users_without_train"] == 0
    per_user = ds.train.degrees() + ds.valid.degrees() + ds.test.degrees()
    assert int(per_user.min()) >= 3
    # per-user split near 80/10/10, every user trains on something
    assert 0.72 < s["n_train"] / n_inter < 0.84 and s["n_valid"] == s["n_test"]
    assert s["n_valid"] > 0.08 * n_inter


def test_synthetic_deterministic_and_overrides():
    a, b = synthetic("tiny", seed=5), synthetic("tiny", seed=5)
    assert_same(a, b)
    c = synthetic("tiny", seed=6)
    assert not torch.equal(a.train.indices, c.train.indices)
    d = synthetic("tiny", n_users=50, n_items=20, n_interactions=400, dims={"audio": 4},
                  n_clusters=3, seed=5)
    assert (d.n_users, d.n_items, d.summary()["n_interactions"]) == (50, 20, 400)
    assert list(d.features) == ["audio"] and d.features["audio"].shape == (20, 4)
    # users may want more items than exist: capped, still unique, still >= 3 each
    e = synthetic("tiny", n_users=10, n_items=5, n_interactions=45, dims={"image": 2})
    per_user = e.train.degrees() + e.valid.degrees() + e.test.degrees()
    assert int(per_user.sum()) == 45 and int(per_user.min()) >= 3 and int(per_user.max()) <= 5
    full = synthetic("tiny", n_users=4, n_items=5, n_interactions=99, dims={})
    assert full.summary()["n_interactions"] == 20  # every pair
    assert_same(from_spec("synthetic"), synthetic("tiny"))
    assert from_spec("synthetic:small", seed=1).n_users == PRESETS["small"][0]
    with pytest.raises(ValueError, match="unknown synthetic size"):
        from_spec("synthetic:huge")
    with pytest.raises(ValueError, match="unknown dataset spec"):
        from_spec("movielens")


@given(seed=st.integers(0, 2**32), n_users=st.integers(1, 40), n_items=st.integers(1, 30),
       per_user=st.integers(1, 12))
def test_synthetic_invariants(seed, n_users, n_items, per_user):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every user must get a train item
        ds = synthetic("tiny", n_users=n_users, n_items=n_items,
                       n_interactions=n_users * per_user, dims={"image": 3}, seed=seed)
    counts = ds.train.degrees() + ds.valid.degrees() + ds.test.degrees()
    assert int(counts.min()) >= min(3, n_items) and int(counts.max()) <= n_items
    assert int(ds.train.degrees().min()) >= 1
    ds.validate()  # unique sorted rows, disjoint splits, finite features


def test_synthetic_planted_structure():
    ds = synthetic("small", seed=0)
    cluster = ds.meta["item_cluster"]
    same = cluster[:, None] == cluster[None, :]
    off_diag = ~torch.eye(ds.n_items, dtype=torch.bool)
    for m, f in ds.features.items():
        f = torch.nn.functional.normalize(f, dim=1)
        cos = f @ f.T
        within, across = cos[same & off_diag].mean(), cos[~same].mean()
        assert within > across + 0.25, m  # ~0.4 vs ~0.0 at noise 1
    # items that share a user are far more often feature-kNN neighbours than random pairs
    r = ds.train.to_dense()
    co = (r.T @ r) > 0
    f = torch.nn.functional.normalize(ds.features["image"], dim=1)
    nn = (f @ f.T).fill_diagonal_(-2).topk(10, dim=1).indices
    knn_rate = co.gather(1, nn).float().mean()
    assert knn_rate > 2 * co[off_diag].float().mean()


# --- sampler ------------------------------------------------------------------------------------


def check_batch(train: CSRGraph, users, pos, neg, batch_size):
    dense = train.to_dense().bool()
    assert users.dtype == pos.dtype == neg.dtype == torch.int64
    assert users.shape == pos.shape == neg.shape == (batch_size,)
    assert bool(dense[users, pos].all()), "positive not a train item"
    assert not bool(dense[users, neg].any()), "negative is a train item"
    assert bool((train.degrees()[users] > 0).all())


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_sampler_valid_triples(tiny, backend):
    s = BPRSampler(tiny.train, batch_size=128, seed=0, backend=backend)
    assert s.n_batches == len(s) == tiny.n_train // 128 + 1
    for users, pos, neg in s:
        check_batch(tiny.train, users, pos, neg, 128)
        assert users.unique().numel() == 128  # distinct users within a batch


def test_sampler_backends_agree_and_reproducible(tiny):
    a = BPRSampler(tiny.train, 64, seed=9, backend="numba")
    b = BPRSampler(tiny.train, 64, seed=9, backend="numpy")
    c = BPRSampler(tiny.train, 64, seed=10)
    for _ in range(5):
        ba, bb, bc = a.sample(), b.sample(), c.sample()
        assert all(torch.equal(x, y) for x, y in zip(ba, bb, strict=True))
    assert not torch.equal(ba[0], bc[0])


def test_sampler_state_round_trip(tiny):
    a = BPRSampler(tiny.train, 100, seed=1)
    for _ in range(3):
        a.sample()
    state = a.state_dict()
    json.dumps(state)  # plain values: fits any checkpoint
    expected = [a.sample() for _ in range(4)]
    b = BPRSampler(tiny.train, 100, seed=123)
    b.load_state_dict(state)
    assert b.batches_drawn == 3
    for e in expected:
        assert all(torch.equal(x, y) for x, y in zip(e, b.sample(), strict=True))
    other = synthetic("tiny", n_users=20, n_items=10, n_interactions=60, dims={})
    with pytest.raises(ValueError, match="sampler state is for a train matrix"):
        BPRSampler(other.train).load_state_dict(state)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_sampler_dense_rows_and_replacement(backend):
    # user 0 lacks only item 37: rejection fails often and the direct draw must find 37;
    # 3 users < batch_size: drawn with replacement
    n_items = 40
    users = np.r_[np.zeros(39, np.int64), [1, 2]]
    items = np.r_[np.delete(np.arange(n_items), 37), [5, 0]]
    train = interactions(users, items, 3, n_items)
    s = BPRSampler(train, batch_size=300, seed=2, backend=backend)
    u, p, n = s.sample()
    check_batch(train, u, p, n, 300)
    assert set(u.tolist()) == {0, 1, 2}
    assert bool((n[u == 0] == 37).all())
    counts = torch.bincount(n[u == 1], minlength=n_items).float()
    assert counts[5] == 0 and int((counts > 0).sum()) > 30  # spread over the missing items
    if backend == "numpy":
        ref = BPRSampler(train, batch_size=300, seed=2, backend="numba").sample()
        assert all(torch.equal(x, y) for x, y in zip(ref, (u, p, n), strict=True))


def test_sampler_negative_uniform():
    # user 0 lacks 6 of 8 items: each should be its negative about 1/6 of the time
    train = interactions(np.array([0, 0, 1]), np.array([1, 3, 0]), 2, 8)
    s = BPRSampler(train, batch_size=2, seed=0)
    negs = []
    for _ in range(1500):
        users, _, neg = s.sample()
        negs += neg[users == 0].tolist()
    freq = np.bincount(negs, minlength=8) / len(negs)
    assert freq[1] == freq[3] == 0 and np.allclose(freq[[0, 2, 4, 5, 6, 7]], 1 / 6, atol=0.03)


def test_sampler_errors():
    train = interactions(np.array([0, 0, 0, 1]), np.array([0, 1, 2, 0]), 3, 3)
    with pytest.raises(ValueError, match="1 users have every item in train.*users 0"):
        BPRSampler(train)
    empty = interactions(np.array([], np.int64), np.array([], np.int64), 3, 3)
    with pytest.raises(ValueError, match="no interactions"):
        BPRSampler(empty)
    with pytest.raises(ValueError, match="batch_size"):
        BPRSampler(interactions(np.array([0]), np.array([0]), 1, 2), batch_size=0)


def test_sampler_without_numba(tiny, monkeypatch):
    monkeypatch.setattr(sampler_mod, "_kernel", None)
    s = BPRSampler(tiny.train, 32, seed=4)
    assert s.backend == "numpy"
    check_batch(tiny.train, *s.sample(), 32)
    with pytest.raises(ValueError, match="needs numba"):
        BPRSampler(tiny.train, backend="numba")
