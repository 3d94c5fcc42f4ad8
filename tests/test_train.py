"""Training end to end: the CLI on the embedded synthetic data, run files, resume, eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from micro_fast.data import from_spec
from micro_fast.train import TrainConfig, evaluate_run, train

EPOCHS = 3


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "micro_fast.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_cli_train_tiny_writes_everything_and_learns(tmp_path):
    out = tmp_path / "run"
    proc = _cli("train", "--data", "synthetic:tiny", "--epochs", str(EPOCHS), "--eval-every",
                "1", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt", "summary.json",
                 "curves.png"):
        assert (out / name).exists(), name
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    rows = _metrics(out)
    assert [r["epoch"] for r in rows] == list(range(EPOCHS))
    assert all("valid" in r for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == EPOCHS
    ds = from_spec("synthetic:tiny", seed=123)
    users = torch.nonzero(ds.valid.degrees() > 0).flatten()
    candidates = ds.n_items - ds.train.degrees()[users].double()
    # a random ranking recalls 20 / candidates of each user's held-out items on average
    random_recall = float((20 / candidates).clamp_max(1).mean())
    best = max(r["valid"]["recall@20"] for r in rows)
    assert best > 1.5 * random_recall, (best, random_recall)
    assert "recall@20" in proc.stdout

    ev = _cli("eval", str(out), cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    result = json.loads((out / "eval_best.json").read_text())
    assert result["test"] == pytest.approx(summary["test_at_best"])


class _Killed(Exception):
    pass


def test_resume_matches_uninterrupted_run(tmp_path):
    base = dict(data="synthetic:tiny", epochs=4, eval_every=1, progress=False, seed=5)
    full = train(TrainConfig(out=str(tmp_path / "full"), **base))

    def kill_after_second(epoch, record):
        if epoch == 1:
            raise _Killed

    cut = TrainConfig(out=str(tmp_path / "cut"), **base)
    with pytest.raises(_Killed):
        train(cut, on_epoch_end=kill_after_second)
    resumed = train(cut, resume=True)
    assert resumed["test_at_best"] == full["test_at_best"]
    assert resumed["best_epoch"] == full["best_epoch"]
    a, b = _metrics(tmp_path / "full"), _metrics(tmp_path / "cut")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    wa = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["model"]
    wb = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bitwise: the run is reproducible


def test_lightgcn_and_lattice_variants_run(tmp_path):
    for name, extra in (("lightgcn", dict(modalities=())),
                        ("lattice", dict(contrastive_weight=0.0))):
        s = train(TrainConfig(data="synthetic:tiny", epochs=1, eval_every=1, progress=False,
                              out=str(tmp_path / name), **extra))
        assert s["test_at_best"]["recall@20"] > 0
        assert s["modalities"] == ([] if name == "lightgcn" else ["image", "text"])


def test_bad_config_and_run_dir(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        train(TrainConfig(batch_size=0, out=str(tmp_path / "x")))
    with pytest.raises(ValueError, match="modalities"):
        train(TrainConfig(modalities=("video",), epochs=1, progress=False,
                          out=str(tmp_path / "y")))
    with pytest.raises(FileNotFoundError, match="config.json"):
        evaluate_run(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="last.pt"):
        train(TrainConfig(epochs=1, progress=False, out=str(tmp_path / "z")), resume=True)


def test_make_data_then_train_from_disk(tmp_path):
    for fmt in ("micro", "mmrec"):
        folder = tmp_path / f"data_{fmt}"
        proc = _cli("make-data", "synthetic:tiny", "--out", str(folder), "--format", fmt,
                    cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        s = train(TrainConfig(data=str(folder), epochs=1, eval_every=1, progress=False,
                              out=str(tmp_path / f"run_{fmt}")))
        assert s["test_at_best"]["users"] > 0


def test_cli_reports_bad_input_in_one_line(tmp_path):
    for args, needle in ((("train", "--data", str(tmp_path / "missing"), "--out",
                           str(tmp_path / "r")), "missing"),
                         (("train", "--batch-size", "0", "--out", str(tmp_path / "r")),
                          "batch_size"),
                         (("eval", str(tmp_path / "nothing")), "config.json")):
        proc = _cli(*args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "error:" in proc.stderr and needle in proc.stderr
        assert "Traceback" not in proc.stderr
