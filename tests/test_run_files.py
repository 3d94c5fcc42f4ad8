"""What a run prints and keeps: a final evaluation, plain logs off a terminal, config files
that reproduce a run, and run directories that are never written over."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from micro_fast import cli
from micro_fast.config import TrainConfig, canonical_options, read_config_file
from micro_fast.run_log import RunLog
from micro_fast.train import train

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+): loss \S+ \(bpr \S+, reg \S+, contrastive \S+\) "
                        r"\S+s \d+ samples/s$")
TIMING_KEYS = ("train_s", "eval_s", "samples_per_s")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "micro_fast.cli", *args], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300)


def _records(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_piped_run_prints_one_plain_line_per_epoch_and_evaluation(tmp_path):
    out = tmp_path / "run"
    proc = _cli("train", "--data", "synthetic:tiny", "--epochs", "3", "--eval-every", "2",
                "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout and "\r" not in proc.stderr
    lines = proc.stdout.splitlines()
    epochs = [m.groups() for m in map(EPOCH_LINE.match, lines) if m]
    assert epochs == [("1", "3"), ("2", "3"), ("3", "3")]
    valid = [line for line in lines if re.match(r"^epoch \d+ valid: recall@10 [0-9.]+ ", line)]
    assert [line.split()[1] for line in valid] == ["2", "3"]   # the schedule, then the last
    assert "final evaluation" in valid[1] and "final evaluation" not in valid[0]
    assert any(line.startswith("epoch 2 test: recall@10 ") for line in lines)
    assert (out / "train.log").read_text().splitlines() == lines


def test_a_run_shorter_than_eval_every_ends_with_metrics(tmp_path):
    summary = train(TrainConfig(data="synthetic:tiny", epochs=3, progress=False,
                                out=str(tmp_path / "r")))        # eval_every is 5
    assert summary["best_epoch"] == 2
    assert summary["best_valid"]["recall@20"] >= 0 and summary["test_at_best"]["recall@20"] >= 0
    rows = _records(tmp_path / "r")
    assert ["valid" in r for r in rows] == [False, False, True] and rows[2]["final_eval"]
    on_disk = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert on_disk["test_at_best"] == summary["test_at_best"]


def test_eval_every_zero_turns_evaluation_off(tmp_path):
    summary = train(TrainConfig(data="synthetic:tiny", epochs=2, eval_every=0, progress=False,
                                out=str(tmp_path / "r")))
    assert summary["test_at_best"] is None and summary["best_valid"] is None
    assert not any("valid" in r for r in _records(tmp_path / "r"))
    assert "evaluation off" in (tmp_path / "r" / "train.log").read_text()
    with pytest.raises(ValueError, match="eval_every"):
        TrainConfig(eval_every=-1).validate()


def test_bars_only_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, drawn in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        bar = RunLog(None, echo=True, append=False).bar(range(3), desc="epoch 0", total=3)
        assert list(bar) == [0, 1, 2] and bar.drawn is drawn
        bar.close()
        assert ("\r" in stream.getvalue()) is drawn
    assert not RunLog(None, echo=False, append=False).bar([1], desc="", total=1).drawn


def test_config_json_reproduces_the_run_bit_for_bit(tmp_path):
    first, again = tmp_path / "x", tmp_path / "y"
    proc = _cli("train", "--data", "synthetic:tiny", "--epochs", "2", "--eval-every", "1",
                "--seed", "11", "--lr", "1e-3", "--quiet", "--out", str(first), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = _cli("train", "--config", str(first / "config.json"), "--out", str(again),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""                       # the file's "progress": false holds
    assert _records(first) == _records(again) and "valid" in _records(again)[-1]
    a = json.loads((first / "summary.json").read_text())
    b = json.loads((again / "summary.json").read_text())
    assert a["test_at_best"] == b["test_at_best"] and a["best_valid"] == b["best_valid"]
    wa = torch.load(first / "last.pt", weights_only=False)["model"]
    wb = torch.load(again / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_yaml_config_and_command_line_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "micro.yaml"
    cfg.write_text("data: synthetic:tiny\nepochs: 5\nlr: 1e-3\nbatch-size: 512\n"
                   "lambda: 0.8\nks: [10, 20]\nmodalities: [image]\nprogress: false\n")
    seen = {}
    monkeypatch.setattr("micro_fast.train.train",
                        lambda config, **kw: seen.update(config=config, **kw))
    assert cli.main(["train", "--config", str(cfg), "--epochs", "1", "--out", "o"]) == 0
    c = seen["config"]
    assert (c.epochs, c.lr, c.batch_size, c.lambda_coeff) == (1, 1e-3, 512, 0.8)
    assert (c.ks, c.modalities, c.progress, c.out) == ((10, 20), ("image",), False, "o")
    assert c.seed == TrainConfig().seed                  # neither the file nor the command
    assert seen["resume"] is False and seen["overwrite"] is False


@pytest.mark.parametrize(("text", "suffix", "needle"), [
    ("epochs: 2\nlearning_rate: 0.1\n", ".yaml", "'learning_rate'"),
    ("epochs: two\n", ".yaml", "'epochs': expected an integer"),
    ("lr: fast\n", ".yml", "'lr': expected a number"),
    ("progress: 1\n", ".yaml", "'progress': expected true or false"),
    ("ks: 20\n", ".yaml", "'ks': expected a list"),
    ('{"epochs": 2, "batch_size": 1.5}', ".json", "'batch_size'"),
    ('{"epochs": 2,', ".json", "not valid JSON"),
    ("- epochs\n", ".yaml", "expected a mapping"),
])
def test_bad_config_files_exit_2_naming_the_key(tmp_path, capsys, text, suffix, needle):
    cfg = tmp_path / f"c{suffix}"
    cfg.write_text(text)
    assert cli.main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_bad_config_key_from_the_command_line_process(tmp_path):
    (tmp_path / "c.yaml").write_text("epoch: 3\n")
    proc = _cli("train", "--config", str(tmp_path / "c.yaml"), cwd=tmp_path)
    assert proc.returncode == 2 and "'epoch'" in proc.stderr and "Traceback" not in proc.stderr
    missing = _cli("train", "--config", str(tmp_path / "none.yaml"), cwd=tmp_path)
    assert missing.returncode == 2 and "none.yaml" in missing.stderr


def test_config_keys_and_values_are_normalized():
    got = canonical_options({"batch-size": 8, "lambda": 1, "ks": "10,20", "threads": None,
                             "lr": "5e-4"})
    assert got == {"batch_size": 8, "lambda_coeff": 1.0, "ks": (10, 20), "threads": None,
                   "lr": 5e-4}
    with pytest.raises(ValueError, match="given twice"):
        canonical_options({"batch-size": 8, "batch_size": 8})
    with pytest.raises(ValueError, match="'checkpoint'"):
        canonical_options({"checkpoint": "best"})      # an eval option, not a training one
    with pytest.raises(FileNotFoundError):
        read_config_file("/nonexistent/c.yaml")


def test_a_second_run_never_writes_over_the_first(tmp_path):
    run = tmp_path / "runs" / "micro"
    proc = _cli("train", "--data", "synthetic:tiny", "--epochs", "1", "--quiet", "--out",
                str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    before = _snapshot(run)
    again = _cli("train", "--data", "synthetic:tiny", "--epochs", "2", "--out", str(run),
                 cwd=tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "--resume" in again.stderr and "--overwrite" in again.stderr
    assert _snapshot(run) == before                              # byte for byte

    (run / "notes.txt").write_text("mine")
    summary = train(TrainConfig(data="synthetic:tiny", epochs=1, seed=9, progress=False,
                                out=str(run)), overwrite=True)
    assert summary["config"]["seed"] == 9 and (run / "notes.txt").read_text() == "mine"
    assert len(_records(run)) == 1
    resumed = train(TrainConfig(data="synthetic:tiny", epochs=2, seed=9, progress=False,
                                out=str(run)), resume=True)
    assert resumed["epochs_run"] == 2 and len(_records(run)) == 2
    log = (run / "train.log").read_text()
    assert log.count("epoch 1/") == 1 and "resumed after epoch 1" in log
    with pytest.raises(ValueError, match="--resume"):
        train(TrainConfig(out=str(run)), resume=True, overwrite=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        train(TrainConfig(out=str(tmp_path / "file")))


def test_eval_takes_a_config_of_evaluation_options(tmp_path, capsys):
    run = tmp_path / "r"
    train(TrainConfig(data="synthetic:tiny", epochs=1, progress=False, out=str(run)))
    (tmp_path / "e.yaml").write_text("ks: [5, 20]\ncheckpoint: last\n")
    assert cli.main(["eval", str(run), "--config", str(tmp_path / "e.yaml")]) == 0
    out = capsys.readouterr().out
    assert "recall@5 " in out and "recall@10 " not in out
    assert (run / "eval_last.json").exists() and not (run / "eval_best.json").exists()
    (tmp_path / "bad.yaml").write_text("dim: 32\n")
    assert cli.main(["eval", str(run), "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "'dim'" in capsys.readouterr().err


def test_mmrec_evaluation_tests_every_epoch_and_reports_test_at_best_validation(tmp_path):
    summary = train(TrainConfig.for_model("micro", evaluation="mmrec", data="synthetic:tiny",
                                          epochs=4, progress=False, out=str(tmp_path / "r")))
    rows = _records(tmp_path / "r")
    assert all("valid" in r and "test" in r for r in rows)      # both, after every epoch
    assert all(set(r["test"]) >= {"recall@5", "ndcg@50"} for r in rows)
    best = max(range(len(rows)), key=lambda e: (rows[e]["valid"]["recall@20"], -e))
    assert summary["best_epoch"] == best
    assert summary["test_at_best"] == rows[best]["test"]
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (config["evaluation"], config["eval_every"], config["patience"]) == ("mmrec", 1, 20)


def test_mmrec_evaluation_stops_after_20_evaluations_without_a_better_recall(tmp_path,
                                                                           monkeypatch):
    from micro_fast import train as train_module

    calls: list[str] = []

    def flat(model, ui_graph, dataset, split, ks, ndcg="standard", backend="auto"):
        calls.append(split)   # validation Recall@20 peaks at the first epoch, then stays down
        value = 0.5 if split == "valid" and calls.count("valid") == 1 else 0.1
        return {f"{m}@{k}": value for k in ks for m in ("recall", "precision", "ndcg", "hit")}

    monkeypatch.setattr(train_module, "evaluate", flat)
    summary = train(TrainConfig.for_model("lightgcn", evaluation="mmrec", data="synthetic:tiny",
                                          epochs=40, progress=False, out=str(tmp_path / "r")))
    # MMRec: stop when the steps since the best exceed stopping_step (20)
    assert summary["stopped_early"] and summary["epochs_run"] == 22
    assert summary["best_epoch"] == 0 and calls.count("test") == 22


def test_mmrec_evaluation_pins_its_schedule(tmp_path, capsys):
    c = TrainConfig.for_model("freedom", evaluation="mmrec")
    assert (c.eval_every, c.patience, c.ndcg, c.ks) == (1, 20, "standard", (5, 10, 20, 50))
    assert TrainConfig.for_model("micro", evaluation="mmrec", ks=(10, 20)).validate().ks == (10, 20)
    for bad in ({"eval_every": 5}, {"patience": 3}, {"ndcg": "published"}):
        with pytest.raises(ValueError, match=f"evaluation 'mmrec'.*{next(iter(bad))}"):
            TrainConfig.for_model("micro", evaluation="mmrec", **bad).validate()
    with pytest.raises(ValueError, match="evaluation must be one of"):
        TrainConfig.for_model("micro", evaluation="recbole")
    code = cli.main(["train", "--evaluation", "mmrec", "--eval-every", "5", "--out",
                     str(tmp_path / "o"), "--quiet"])
    assert code == 2 and "eval_every 5" in capsys.readouterr().err
