"""One MICRO training epoch at Clothing size on the GPU: ``micro-fast train`` against the
published training step (reference_micro.py) on the same device, and the evaluation metrics
of both after the same batches from the same weights.

    python benchmarks/gpu_epoch.py --out epoch.json --md epoch.md --run-dir runs/gpu-clothing
    python benchmarks/gpu_epoch.py --device cpu --quick      # synthetic:tiny on the CPU

Two parts, in this order, the JSON and markdown rewritten after each (a stopped run keeps
the finished part):

1. ``train``: ``micro-fast train --data synthetic:clothing --epochs 1 --eval-every 1 --device
   cuda --out RUN_DIR --quiet`` in a subprocess; its ``metrics.jsonl`` gives the epoch's
   training time (``train_s``), the evaluation time and the validation and test metrics, and
   the wall time of the whole command is kept beside them.
2. ``reference``: from the same weights, micro_fast's step and the published step each run on
   the same first ``--ref-batches`` batches (the graph-rebuilding first batch included; 0: the
   whole epoch), both with torch's fused Adam (``micro_fast.train.adam``), every step
   synchronized and timed; reported per batch (the rebuilding first one and the median of the
   others) on both sides, and as an epoch only when the whole epoch was timed: nothing is
   extrapolated. After the first ``--metric-batches`` of them each is evaluated
   (``full_ranking`` on the validation split, the learned item graphs put back afterwards), as
   bench_train.py's ``test_same_metrics`` compares them: ``match`` says whether every metric
   agrees within ``rel=1e-3, abs=1e-4``.

Data: ``micro_fast.data.synthetic("clothing", seed=0)`` (39,387 users, 23,033 items, 4096-d
image and 1024-d text features), published defaults (batch 1024, seed 123). ``--quick``:
``synthetic:tiny``. Exit status 0 when every part ran and the metrics of both sides match;
1 when a part failed or the metrics differ.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reference_micro as ref  # noqa: E402
import torch  # noqa: E402

import micro_fast as mf  # noqa: E402
from micro_fast import data as mf_data  # noqa: E402
from micro_fast.metrics import full_ranking  # noqa: E402
from micro_fast.train import TrainConfig, adam, build_model, interaction_graph  # noqa: E402

REL, ABS = 1e-3, 1e-4


class Epoch:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.size = args.data.split(":", 1)[1] if ":" in args.data else "tiny"
        self.res: dict = {"device": str(self.device), "data": args.data,
                          "quick": args.quick, "ref_batches": args.ref_batches,
                          "metric_batches": args.metric_batches, "torch": torch.__version__,
                          "micro_fast": mf.__version__, "parts": {}}
        if self.device.type == "cuda":
            self.res["gpu"] = torch.cuda.get_device_name(self.device)
        self._ds = None
        self.adj = None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def dataset(self) -> mf_data.Dataset:
        if self._ds is None:
            t = time.perf_counter()
            self._ds = mf_data.synthetic(self.size, seed=0)
            self.res["dataset_s"] = time.perf_counter() - t
        return self._ds

    def write(self) -> None:
        if self.args.out:
            Path(self.args.out).write_text(json.dumps(self.res, indent=1, default=str) + "\n")
        if self.args.md:
            Path(self.args.md).write_text(markdown(self.res))

    # --- 1. the CLI ------------------------------------------------------------------------
    def train_cli(self) -> dict:
        run_dir = Path(self.args.run_dir)
        if run_dir.exists():
            if any(run_dir.iterdir()) and not (run_dir / "config.json").exists():
                raise SystemExit(f"--run-dir {run_dir} is a non-empty folder that is not a "
                                 "run directory: not removing it")
            shutil.rmtree(run_dir)
        exe = shutil.which("micro-fast")
        cmd = ([exe] if exe else [sys.executable, "-m", "micro_fast.cli"]) + [
            "train", "--data", self.args.data, "--epochs", "1", "--eval-every", "1",
            "--device", self.args.device, "--out", str(run_dir), "--quiet"]
        print("$ " + " ".join(cmd), flush=True)
        t = time.perf_counter()
        proc = subprocess.run(cmd, timeout=self.args.train_timeout)
        wall = time.perf_counter() - t
        out = {"command": " ".join(cmd), "returncode": proc.returncode, "wall_s": wall}
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():
            records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
            if records:
                last = records[-1]
                out.update(train_s=last.get("train_s"), eval_s=last.get("eval_s"),
                           loss=last.get("loss"), valid=last.get("valid"),
                           test=last.get("test"))
        if proc.returncode != 0:
            raise RuntimeError(f"micro-fast train exited with {proc.returncode}")
        return out

    # --- shared setup (bench_train.py's _setup / _reference_from, on the device) -----------
    def setup(self, seed: int = 123):
        ds = self.dataset()
        config = TrainConfig(data=self.args.data, seed=seed, progress=False)
        torch.manual_seed(seed)
        model = build_model(config, ds).to(self.device)
        ui = interaction_graph(ds, "published", self.device)
        return ds, config, model, ui

    def reference_from(self, model, ds):
        t = time.perf_counter()
        names = model.modalities
        # copies: the reference trains its features in place, and ds.features stays as made
        feats = [ds.features[m].to(self.device, copy=True) for m in names]
        r = ref.ReferenceMICRO(ds.n_users, ds.n_items, feats).to(self.device)
        ref.copy_weights(model, r)
        if self.adj is None:
            users, items = ds.train_pairs()
            self.adj = ref.published_norm_adj(users.numpy(), items.numpy(), ds.n_users,
                                              ds.n_items).to(self.device)
        self.res.setdefault("reference_setup_s", []).append(time.perf_counter() - t)
        return r, self.adj

    def batch(self, sampler):
        return tuple(t.to(self.device) for t in sampler.sample())

    def ours_step(self, model, opt, ui, batch, build):
        opt.zero_grad()
        loss, _ = model.loss(ui, *batch, build_item_graph=build)
        loss.backward()
        opt.step()
        return loss.detach()

    def ref_step(self, r, opt, adj, batch, build, batch_size):
        opt.zero_grad()
        loss = ref.reference_loss(r, adj, *batch, batch_size=batch_size,
                                  build_item_graph=build)
        loss.backward()
        opt.step()
        return loss.detach()

    def timed(self, step) -> float:
        self.sync()
        t = time.perf_counter()
        step()
        self.sync()
        return time.perf_counter() - t

    # --- 2. the published step, timed, and 3. the metrics of both ----------------------------
    def evaluate(self, name: str, model, r, ui, adj, ks) -> dict:
        """Validation metrics of one implementation now; the learned item graphs that the
        evaluation rebuilds are put back afterwards, so the next batches train as before."""
        train, valid = self.dataset().train.to(self.device), self.dataset().valid.to(self.device)
        if name == "micro_fast":
            saved = model._graphs
            users, items = model.embeddings(ui)
            model._graphs = saved
        else:
            saved = r.item_adj
            with torch.no_grad():
                users, items, *_ = r(adj, build_item_graph=True)
            r.item_adj = saved
        return full_ranking(users, items, train, valid, ks)

    def reference(self) -> dict:
        """Both steps from the same weights on the same batches (one seeded sampler each),
        every step synchronized and timed; both evaluated after ``--metric-batches``."""
        ds, config, model, ui = self.setup()
        r, adj = self.reference_from(model, ds)
        n_batches = mf_data.BPRSampler(ds.train, config.batch_size, seed=config.seed).n_batches
        steps = (max(self.args.ref_batches, self.args.metric_batches) if self.args.ref_batches
                 else n_batches)
        out: dict = {"n_batches": n_batches, "timed_batches": steps,
                     "whole_epoch": steps >= n_batches,
                     "optimizer": "torch.optim.Adam(fused=True) (micro_fast.train.adam), both"}
        metrics: dict = {}
        for name in ("micro_fast", "reference"):
            sampler = mf_data.BPRSampler(ds.train, config.batch_size, seed=config.seed)
            params = model.parameters() if name == "micro_fast" else r.parameters()
            opt = adam(params, config.lr)
            times = []
            for b in range(steps):
                batch = self.batch(sampler)
                if name == "micro_fast":
                    step = functools.partial(self.ours_step, model, opt, ui, batch, b == 0)
                else:
                    step = functools.partial(self.ref_step, r, opt, adj, batch, b == 0,
                                             config.batch_size)
                times.append(self.timed(step))
                if b + 1 == self.args.metric_batches:
                    metrics[name] = self.evaluate(name, model, r, ui, adj, config.ks)
            rest = statistics.median(times[1:]) if len(times) > 1 else None
            out[name] = {"first_batch_s": times[0], "other_batch_median_s": rest,
                         "batch_s": times}
            if steps >= n_batches:
                out[name]["epoch_s"] = sum(times[:n_batches])
            print(f"{name}: first batch {times[0]:.3f} s, other batches {_f(rest)} s (median) "
                  f"over {steps} timed batches of {n_batches}", flush=True)
        ours, theirs = metrics["micro_fast"], metrics["reference"]
        diffs = {k: abs(ours[k] - theirs[k]) for k in ours}
        match = all(d <= max(REL * abs(theirs[k]), ABS) for k, d in diffs.items())
        self.res["parts"]["metrics"] = {"steps": self.args.metric_batches, "micro_fast": ours,
                                        "reference": theirs,
                                        "max_abs_diff": max(diffs.values()), "match": match}
        print(f"after {self.args.metric_batches} identical batches: micro_fast recall@20 "
              f"{ours['recall@20']:.5f} ndcg@20 {ours['ndcg@20']:.5f}; reference recall@20 "
              f"{theirs['recall@20']:.5f} ndcg@20 {theirs['ndcg@20']:.5f}; "
              f"{'match' if match else 'DIFFER'}", flush=True)
        return out


def _f(v, fmt: str = ".4g") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(res: dict) -> str:
    parts = res["parts"]
    where = res.get("gpu") or "CPU"
    lines = [f"Data `{res['data']}` on {where} ({res['device']}), torch {res['torch']}"
             + (" -- quick problem (a rehearsal of the script, not a benchmark)"
                if res.get("quick") else ""), ""]
    train = parts.get("train", {})
    refp = parts.get("reference", {})
    if "error" in train:
        lines.append(f"- train: error: {train['error']}")
    elif train:
        lines.append(f"- `micro-fast train`: epoch training time {_f(train.get('train_s'))} s,"
                     f" evaluation {_f(train.get('eval_s'))} s, whole command "
                     f"{_f(train.get('wall_s'))} s (data, graphs, checkpoints included)")
        for split in ("valid", "test"):
            m = train.get(split) or {}
            if m:
                lines.append(f"  - {split}: recall@20 {_f(m.get('recall@20'))}, ndcg@20 "
                             f"{_f(m.get('ndcg@20'))}")
    if "error" in refp:
        lines.append(f"- reference: error: {refp['error']}")
    elif refp:
        lines += ["", "| implementation | first (rebuilding) batch s | other batches s "
                  "(median) | epoch s (only when timed whole) | batches timed |",
                  "| --- | --- | --- | --- | --- |"]
        for name in ("micro_fast", "reference"):
            p = refp.get(name)
            if p:
                lines.append(f"| {name} | {_f(p['first_batch_s'])} | "
                             f"{_f(p.get('other_batch_median_s'))} | "
                             f"{_f(p.get('epoch_s'))} | {refp['timed_batches']} of "
                             f"{refp['n_batches']} |")
        lines.append("")
    ours_p, ref_p = refp.get("micro_fast", {}), refp.get("reference", {})
    if ours_p.get("other_batch_median_s") and ref_p.get("other_batch_median_s"):
        lines.append(f"- batch: published step / micro_fast, the same fused Adam: first "
                     f"(rebuilding) {ref_p['first_batch_s'] / ours_p['first_batch_s']:.3g}x, "
                     f"others {ref_p['other_batch_median_s'] / ours_p['other_batch_median_s']:.3g}x"
                     " (medians)")
    if ref_p.get("epoch_s") and ours_p.get("epoch_s"):
        lines.append(f"- epoch, both timed whole: {_f(ours_p['epoch_s'])} s vs "
                     f"{_f(ref_p['epoch_s'])} s: {ref_p['epoch_s'] / ours_p['epoch_s']:.3g}x")
    met = parts.get("metrics", {})
    if "error" in met:
        lines.append(f"- metrics: error: {met['error']}")
    elif met:
        o, t = met["micro_fast"], met["reference"]
        lines.append(f"- metrics: after {met['steps']} identical batches: micro_fast "
                     f"recall@20 {o['recall@20']:.5f} ndcg@20 {o['ndcg@20']:.5f}, reference "
                     f"recall@20 {t['recall@20']:.5f} ndcg@20 {t['ndcg@20']:.5f}; largest "
                     f"difference {met['max_abs_diff']:.2g}: "
                     f"{'match' if met['match'] else 'DIFFER'} (rel {REL:g}, abs {ABS:g})")
    if res.get("dataset_s") is not None:
        lines.append(f"- dataset generation in this process: {res['dataset_s']:.1f} s")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--quick", action="store_true", help="synthetic:tiny (a rehearsal)")
    p.add_argument("--data", default=None, help="synthetic:<size> (default synthetic:clothing,"
                   " quick synthetic:tiny)")
    p.add_argument("--ref-batches", type=int, default=5, help="batches timed on each side "
                   "(0: the whole epoch)")
    p.add_argument("--metric-batches", type=int, default=3,
                   help="identical batches before the metrics are compared")
    p.add_argument("--parts", default="train,reference", help="train (the CLI), reference "
                   "(the published step against micro_fast's, and the metrics of both)")
    p.add_argument("--run-dir", default=None, help="run directory of micro-fast train "
                   "(default: a temporary folder)")
    p.add_argument("--train-timeout", type=float, default=None,
                   help="seconds for micro-fast train")
    p.add_argument("--out", default=None, help="JSON file")
    p.add_argument("--md", default=None, help="markdown file")
    args = p.parse_args(argv)
    args.data = args.data or ("synthetic:tiny" if args.quick else "synthetic:clothing")
    if not args.data.startswith("synthetic"):
        p.error("--data must be synthetic:<size>")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device (use --device cpu)")
    if args.run_dir is None:
        import tempfile

        args.run_dir = os.path.join(tempfile.mkdtemp(prefix="gpu_epoch."), "run")
    os.environ.setdefault("MICRO_FAST_TUNE", "0")
    e = Epoch(args)
    runners = {"train": e.train_cli, "reference": e.reference}
    failed = []
    for part in [x.strip() for x in args.parts.split(",") if x.strip()]:
        if part not in runners:
            p.error(f"unknown part {part!r}; parts: {', '.join(runners)}")
        print(f"== {part}", flush=True)
        t = time.perf_counter()
        try:
            e.res["parts"][part] = runners[part]()
        except Exception as exc:  # noqa: BLE001 - the next part still runs
            traceback.print_exc()
            failed.append(part)
            e.res["parts"][part] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
        e.res["parts"][part]["part_s"] = time.perf_counter() - t
        e.write()
        if e.device.type == "cuda":
            torch.cuda.empty_cache()
    met = e.res["parts"].get("metrics")
    if met and not met.get("match"):
        failed.append("metrics: the two implementations' metrics differ")
    print(markdown(e.res))
    if failed:
        print(f"gpu_epoch: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
