"""Injected failures while a run writes its files: a full disk in the middle of a checkpoint,
a metrics line cut short by a kill. The last good checkpoint always survives and the run
resumes to the same result as an uninterrupted one."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from micro_fast.train import TrainConfig, train


def _config(out, epochs):
    return TrainConfig(data="synthetic:tiny", epochs=epochs, eval_every=1, seed=3,
                       out=str(out), progress=False, threads=1)


def _final(out):
    return json.loads((out / "summary.json").read_text())["best_valid"]


def _last_epoch(out):
    return torch.load(out / "last.pt", weights_only=False)["state"]["epoch"]


def test_full_disk_during_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    train(_config(reference, 4))

    run = tmp_path / "run"
    train(_config(run, 2))
    assert _last_epoch(run) == 2
    good = (run / "last.pt").read_bytes()

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "optimizer" in obj:  # last.pt of the next epoch
            f.write(b"\x80partial checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train(_config(run, 4), resume=True)
    monkeypatch.setattr(torch, "save", real_save)

    assert (run / "last.pt").read_bytes() == good, "the last good checkpoint was touched"
    assert not list(run.glob("*.tmp")), "a partial temporary file was left behind"
    train(_config(run, 4), resume=True)
    assert _last_epoch(run) == 4
    assert _final(run) == _final(reference)


def test_a_metrics_line_cut_short_is_dropped_on_resume(tmp_path):
    reference = tmp_path / "reference"
    train(_config(reference, 3))
    run = tmp_path / "run"
    train(_config(run, 2))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "loss": 0.6')  # a kill during the append of epoch 2
    train(_config(run, 3), resume=True)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]
    assert _final(run) == _final(reference)


def test_a_corrupt_metrics_file_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    train(_config(run, 1))
    text = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text("not json\n" + text)
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 1 is not a JSON record"):
        train(_config(run, 2), resume=True)
