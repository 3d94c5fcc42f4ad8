"""Readers and writers for the two on-disk layouts of the field.

* MICRO / LATTICE: ``<root>/{train,val,test}.json`` (user id string -> list of 0-based item
  ids; LATTICE keeps them under ``<root>/5-core/``, which is also accepted) and one
  ``<modality>_feat.npy`` [n_items, d] per modality.
* MMRec / FREEDOM: ``<root>/<name>.inter``, tab-separated with a header naming the columns;
  ``userID``, ``itemID`` and ``x_label`` (0 train, 1 valid, 2 test) are used, others ignored;
  the same ``*_feat.npy`` files.

Every malformed input raises ``ValueError`` (``FileNotFoundError`` for a missing file) whose
message starts with the offending path. Users without any train item only warn.
"""

from __future__ import annotations

import json
import warnings
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from micro_fast.data.dataset import SPLITS, Dataset, interactions, order_features
from micro_fast.errors import InputError, MissingFileError

MICRO_FILES = {"train": "train.json", "valid": "val.json", "test": "test.json"}
INTER_COLUMNS = ("userID", "itemID", "x_label")
INTER_HEADER = "userID\titemID\trating\ttimestamp\tx_label"
FEATURE_SUFFIX = "_feat.npy"
_MAX_ID_DIGITS = 18  # stays inside int64


# --- features ---------------------------------------------------------------------------------


def _feature_files(root: Path) -> dict[str, Path]:
    files = {p.name[: -len(FEATURE_SUFFIX)]: p for p in sorted(root.glob("*" + FEATURE_SUFFIX))}
    if "" in files:
        raise InputError(f"{files['']}: a feature file needs a modality name before "
                         f"'{FEATURE_SUFFIX}'")
    return order_features(files)


def _load_feature(path: Path) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    if not isinstance(a, np.ndarray):
        raise InputError(f"{path}: expected one array, got {type(a).__name__}")
    if a.ndim != 2:
        raise InputError(f"{path}: features must be 2-D [n_items, d], got ndim {a.ndim} "
                         f"(shape {a.shape})")
    if a.dtype.kind not in "fiu":
        raise InputError(f"{path}: features must be numeric, got dtype {a.dtype}")
    # float16 files (TikTok) are widened once here; the models compute in float32
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).any(axis=1).sum())
        raise InputError(f"{path}: features contain NaN or inf ({bad} rows affected)")
    return a


def _load_features(root: Path, max_item: int) -> tuple[dict[str, torch.Tensor], int]:
    """Features of ``root`` and n_items: their row count, or ``max_item + 1`` without any."""
    files = _feature_files(root)
    feats = {m: _load_feature(p) for m, p in files.items()}
    if not feats:
        return {}, max_item + 1
    rows = {m: f.shape[0] for m, f in feats.items()}
    n_items = max(rows.values())
    for m, r in rows.items():
        if r != n_items:
            raise InputError(f"{files[m]}: has {r} rows but {files[max(rows, key=rows.get)]} "
                             f"has {n_items}; feature rows must equal n_items in every modality")
    if max_item >= n_items:
        first = next(iter(files.values()))
        raise InputError(f"{first}: has {n_items} rows but the interactions use item id "
                         f"{max_item} (ids out of range vs features; rows must be n_items)")
    return {m: torch.from_numpy(f) for m, f in feats.items()}, n_items


def _save_features(dataset: Dataset, root: Path) -> None:
    for m, f in dataset.features.items():
        np.save(root / f"{m}{FEATURE_SUFFIX}", f.detach().cpu().to(torch.float32).numpy())


# --- MICRO / LATTICE json ---------------------------------------------------------------------


class _Pairs(list):
    """A JSON object as its (key, value) pairs: keeps repeated user keys instead of dropping
    all but the last, so their item lists can be merged."""


def _read_json_split(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """``(users, items)`` int64 arrays, one entry per listed (user, item), and the largest
    user key (-1 for none): a key with an empty list still counts as a user."""
    if not path.is_file():
        raise MissingFileError(f"{path}: missing file (MICRO layout needs "
                                f"{', '.join(MICRO_FILES.values())})")
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh, object_pairs_hook=_Pairs)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: bad JSON ({exc})") from None
    if not isinstance(obj, _Pairs):
        raise InputError(f"{path}: expected a JSON object mapping user id -> list of item ids, "
                         f"got {type(obj).__name__}")
    keys = [k for k, _ in obj]
    lists = [v for _, v in obj]
    if set(map(type, lists)) - {list}:
        bad = next(k for k, v in obj if type(v) is not list)
        raise InputError(f"{path}: user {bad!r}: value must be a list of item ids")
    joined = "".join(keys)
    lengths = list(map(len, keys))
    if keys and not (joined.isascii() and joined.isdigit() and min(lengths) > 0
                     and max(lengths) <= _MAX_ID_DIGITS):
        bad = next(k for k in keys if not (k.isascii() and k.isdigit())
                   or not 0 < len(k) <= _MAX_ID_DIGITS)
        raise InputError(f"{path}: user id {bad!r} is not a non-negative integer")
    flat = list(chain.from_iterable(lists))
    # bool is an int subclass and floats would truncate silently: insist on exact ints
    if set(map(type, flat)) - {int}:
        bad = next(x for x in flat if type(x) is not int)
        raise InputError(f"{path}: item id {bad!r} is not an integer")
    items = np.array(flat, dtype=np.int64) if flat else np.empty(0, np.int64)
    if items.size and items.min() < 0:
        raise InputError(f"{path}: negative item id {int(items.min())}")
    counts = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    user_ids = np.array(keys, dtype=np.int64) if keys else np.empty(0, np.int64)
    users = np.repeat(user_ids, counts)
    return users, items, (int(user_ids.max()) if user_ids.size else -1)


def _micro_json_dir(root: Path) -> Path:
    if not (root / MICRO_FILES["train"]).exists() and (root / "5-core" / "train.json").exists():
        return root / "5-core"  # LATTICE's layout
    return root


def load_micro(root: str | Path, name: str | None = None) -> Dataset:
    """Reads the MICRO/LATTICE layout (see the module docstring).

    ``n_users`` is the largest user id (keys included, even with empty lists) + 1; ``n_items``
    the feature row count, or the largest item id + 1 without features. Repeated items in a
    user's list are merged.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: missing dataset folder")
    jdir = _micro_json_dir(root)
    parts = {s: _read_json_split(jdir / f) for s, f in MICRO_FILES.items()}
    n_users = max([p[2] for p in parts.values()] +
                  [int(p[0].max()) if p[0].size else -1 for p in parts.values()]) + 1
    max_item = max([int(p[1].max()) if p[1].size else -1 for p in parts.values()])
    features, n_items = _load_features(root, max_item)
    splits = {s: interactions(p[0], p[1], n_users, n_items) for s, p in parts.items()}
    _check_disjoint(splits, {s: jdir / f for s, f in MICRO_FILES.items()}, n_items)
    return Dataset(name or root.name, n_users, n_items, **splits, features=features,
                   meta={"source": str(root), "format": "micro"}).validate()


def save_micro(dataset: Dataset, root: str | Path) -> Path:
    """Writes ``dataset`` in the MICRO layout under ``root`` (created); returns ``root``.

    Every user 0..n_users-1 is a key of every split (empty lists allowed), so ``n_users``
    survives a round trip; ``n_items`` does through the feature rows (without features it is
    the largest item id + 1).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for s, fname in MICRO_FILES.items():
        g = dataset.split(s)
        rows = np.split(g.indices.numpy(), g.indptr.numpy()[1:-1]) if dataset.n_users else []
        obj = {str(u): r.tolist() for u, r in enumerate(rows)}
        with open(root / fname, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, separators=(",", ":"))
    _save_features(dataset, root)
    return root


# --- MMRec .inter -----------------------------------------------------------------------------


def _inter_file(root: Path, name: str | None) -> Path:
    if name is not None and (root / f"{name}.inter").is_file():
        return root / f"{name}.inter"
    if (root / f"{root.name}.inter").is_file():
        return root / f"{root.name}.inter"
    found = sorted(root.glob("*.inter"))
    if len(found) == 1 and name is None:
        return found[0]
    want = f"{name or root.name}.inter"
    extra = f" (found {', '.join(p.name for p in found)})" if found else ""
    raise MissingFileError(f"{root / want}: missing file{extra}")


def _read_inter(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
        # the data itself goes through numpy's C parser, column by column
        missing = [c for c in INTER_COLUMNS if c not in header]
        if missing:
            raise InputError(f"{path}: missing columns {missing} in the header line "
                             f"(got {header}); need {list(INTER_COLUMNS)}, tab-separated")
        cols = [header.index(c) for c in INTER_COLUMNS]
        try:
            with warnings.catch_warnings():  # a header-only file is an empty dataset
                warnings.simplefilter("ignore", UserWarning)
                data = np.loadtxt(fh, delimiter="\t", usecols=cols, dtype=np.int64,
                                  comments=None, ndmin=2)
        except ValueError as exc:
            raise InputError(f"{path}: bad data line ({exc}; rows are counted after the "
                             "header; ids and x_label must be integers)") from None
    users, items, label = data[:, 0], data[:, 1], data[:, 2]
    for col, a in (("userID", users), ("itemID", items)):
        if a.size and a.min() < 0:
            raise InputError(f"{path}: negative {col} {int(a.min())}")
    bad = ~np.isin(label, (0, 1, 2))
    if bad.any():
        raise InputError(f"{path}: bad x_label value {int(label[bad][0])} on data row "
                         f"{int(np.argmax(bad)) + 1}; x_label must be 0 (train), 1 (valid) or "
                         "2 (test)")
    return users, items, label


def load_mmrec(root: str | Path, name: str | None = None) -> Dataset:
    """Reads the MMRec layout: ``<root>/<name>.inter`` (``name`` defaults to the folder name,
    or the only ``.inter`` file there) and ``*_feat.npy``.

    ``n_users`` / ``n_items`` are the largest ids + 1 (``n_items``: the feature row count when
    there are features). Repeated rows of one split are merged.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: missing dataset folder")
    path = _inter_file(root, name)
    users, items, label = _read_inter(path)
    n_users = int(users.max()) + 1 if users.size else 0
    features, n_items = _load_features(root, int(items.max()) if items.size else -1)
    splits = {s: interactions(users[label == k], items[label == k], n_users, n_items)
              for k, s in enumerate(SPLITS)}
    _check_disjoint(splits, dict.fromkeys(SPLITS, path), n_items)
    return Dataset(name or path.stem, n_users, n_items, **splits, features=features,
                   meta={"source": str(root), "format": "mmrec"}).validate()


def save_mmrec(dataset: Dataset, root: str | Path, name: str | None = None) -> Path:
    """Writes ``<root>/<name>.inter`` (rating 1, timestamp 0) and the ``*_feat.npy`` files;
    ``name`` defaults to ``dataset.name``. Returns the .inter path.

    Users without any interaction and, without features, items past the largest id do not
    survive a round trip (the format has no room for them).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    blocks = []
    for k, s in enumerate(SPLITS):
        g = dataset.split(s)
        u, i = g.row_indices().numpy(), g.indices.numpy()
        blocks.append(np.stack([u, i, np.ones_like(u), np.zeros_like(u), np.full_like(u, k)], 1))
    rows = np.concatenate(blocks) if blocks else np.empty((0, 5), np.int64)
    rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
    path = root / f"{name or dataset.name}.inter"
    np.savetxt(path, rows, fmt="%d", delimiter="\t", header=INTER_HEADER, comments="")
    _save_features(dataset, root)
    return path


# --- shared -----------------------------------------------------------------------------------


def _check_disjoint(splits: dict, paths: dict[str, Path], n_items: int) -> None:
    """The same check as ``Dataset.validate``, but naming the files."""
    keys = {s: g.row_indices().numpy() * max(n_items, 1) + g.indices.numpy()
            for s, g in splits.items()}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        both = np.intersect1d(keys[a], keys[b], assume_unique=True)
        if both.size:
            u, i = divmod(int(both[0]), max(n_items, 1))
            where = (f"{paths[a]} and {paths[b]}" if paths[a] != paths[b]
                     else f"{paths[a]} (x_label {SPLITS.index(a)} and {SPLITS.index(b)})")
            raise InputError(f"{where}: {both.size} (user, item) pairs are in both {a} and "
                             f"{b}, e.g. user {u} item {i}")


def detect_format(path: str | Path) -> str:
    """``"micro"`` or ``"mmrec"`` from the files present; FileNotFoundError if neither."""
    root = Path(path)
    if root.is_file():
        if root.suffix == ".inter":
            return "mmrec"
        root = root.parent
    if (root / "train.json").exists() or (root / "5-core" / "train.json").exists():
        return "micro"
    if any(root.glob("*.inter")):
        return "mmrec"
    raise MissingFileError(f"{root}: no dataset found (expected train.json/val.json/test.json "
                            "for the MICRO layout or a <name>.inter file for MMRec)")


def load(path: str | Path, format: str = "auto") -> Dataset:
    """Loads a dataset folder (or an ``.inter`` / split ``.json`` file inside one).

    ``format``: ``"micro"``, ``"mmrec"`` or ``"auto"`` (from the files present).
    """
    if format not in ("auto", "micro", "mmrec"):
        raise InputError(f"format must be 'auto', 'micro' or 'mmrec', got {format!r}")
    p = Path(path)
    fmt = detect_format(p) if format == "auto" else format
    name = None
    if p.is_file():
        name = p.stem if p.suffix == ".inter" else None
        p = p.parent
        if p.name == "5-core":
            p = p.parent
    return load_micro(p) if fmt == "micro" else load_mmrec(p, name)
