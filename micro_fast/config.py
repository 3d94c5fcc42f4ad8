"""The configuration of a training run: every option of ``micro-fast train``, with MICRO's
published defaults (MICRO.md), and config files.

A config file (YAML or JSON) maps option names to values: ``batch_size: 2048`` or
``batch-size: 2048``, ``lambda: 0.9`` (the command-line spelling) or ``lambda_coeff: 0.9``,
lists for ``ks`` and ``modalities``. A run directory's ``config.json`` is one. Values are
checked against the option's type; an unknown key or a value of the wrong type is an
``InputError`` naming the key. Precedence: the defaults below (``MODEL_DEFAULTS`` of the
chosen model over them, then ``EVALUATION_DEFAULTS`` of the chosen evaluation convention), then
the file, then the options given on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from micro_fast.errors import InputError, MissingFileError

UI_NORMALIZATIONS = ("published", "sym")
MODELS = ("micro", "freedom", "lattice", "lightgcn")
EVALUATIONS = ("micro", "mmrec")

#: Each model's published defaults where they differ from MICRO's (the dataclass defaults):
#: FREEDOM's and LATTICE's from MMRec (their model files and overall config; where MMRec
#: searches a grid, a value from it: FREEDOM reg_weight 1e-4 of 0, 1e-5, 1e-4, 1e-3; LATTICE
#: lr 5e-4 of 1e-4, 5e-4, 1e-3, 5e-3 and reg_weight 1e-5), LightGCN is MICRO without modalities.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "micro": {},
    "freedom": {"lr": 1e-3, "lr_decay": 1.0, "batch_size": 2048, "eval_every": 1,
                "patience": 20, "reg_weight": 1e-4, "ui_normalization": "mmrec"},
    "lattice": {"lr": 5e-4, "batch_size": 2048, "eval_every": 1, "patience": 20,
                "reg_weight": 1e-5},
    "lightgcn": {"modalities": ()},
}

#: What an evaluation convention fixes. "micro" (MICRO's code): validation every
#: ``eval_every`` epochs, test only when validation Recall@20 improves. "mmrec" (MMRec's
#: trainer): validation and test after every epoch, early stopping once validation Recall@20
#: has not improved for 20 more evaluations, standard NDCG, its cut-offs 5, 10, 20, 50; the
#: reported test metrics are those of the best validation epoch either way.
EVALUATION_DEFAULTS: dict[str, dict[str, Any]] = {
    "micro": {},
    "mmrec": {"eval_every": 1, "patience": 20, "ndcg": "standard", "ks": (5, 10, 20, 50)},
}
# the options the "mmrec" convention pins (ks may change: MMRec's topk is a setting too)
_MMREC_FIXED = ("eval_every", "patience", "ndcg")


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; the defaults are MICRO's published ones (MICRO.md);
    ``TrainConfig.for_model(name, **options)`` starts from another model's (``MODEL_DEFAULTS``).
    """

    model: str = "micro"               # "micro", "freedom", "lattice" or "lightgcn"
    data: str = "synthetic"            # a path, "synthetic" or "synthetic:<size>"
    format: str = "auto"               # "auto", "micro" or "mmrec" for paths
    out: str = "runs/micro"
    epochs: int = 1000
    batch_size: int = 1024
    lr: float = 5e-4
    lr_decay: float = 0.96             # lr x lr_decay ** (epoch / lr_decay_epochs)
    lr_decay_epochs: int = 50
    seed: int = 123
    eval_every: int = 5
    patience: int = 10                 # evaluations without improvement before stopping
    ks: tuple[int, ...] = (10, 20, 50)
    ndcg: str = "standard"             # or "published"
    evaluation: str = "micro"          # or "mmrec": EVALUATION_DEFAULTS
    modalities: tuple[str, ...] | None = None   # None: every modality in the data
    dim: int = 64
    feat_dim: int = 64
    k: int = 10
    lambda_coeff: float = 0.9
    knn_normalization: str = "sym"
    item_layers: int = 1
    ui_layers: int = 2
    ui_normalization: str = "published"   # D^-1 (A + I) as published, or "sym" (LightGCN)
    contrastive_weight: float = 0.03
    tau: float = 0.5
    reg_weight: float = 1e-5           # FREEDOM: the weight of its modality BPR terms
    dropout: float = 0.8               # FREEDOM: share of interactions pruned each epoch
    image_weight: float = 0.1          # FREEDOM: weight of the image kNN graph in the mix
    device: str = "auto"
    backend: str = "auto"
    threads: int | None = None
    progress: bool = True
    compile: bool = False              # torch.compile(model.loss, fullgraph=True), one process
    dist_timeout: float = 600.0        # seconds a rank waits for the others (torchrun runs)

    def validate(self) -> TrainConfig:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.eval_every >= 0, "eval_every must be >= 0 (0: no evaluation)"),
            (self.patience >= 0, "patience must be >= 0"),
            (len(self.ks) > 0 and min(self.ks) >= 1, "ks must be cut-offs >= 1"),
            (20 in self.ks, "ks must include 20 (early stopping uses Recall@20)"),
            (self.model in MODELS, f"model must be one of {MODELS}"),
            (self.evaluation in EVALUATIONS, f"evaluation must be one of {EVALUATIONS}"),
            (self.ui_normalization in UI_NORMALIZATIONS + ("mmrec",),
             f"ui_normalization must be one of {UI_NORMALIZATIONS + ('mmrec',)}"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (0.0 <= self.image_weight <= 1.0, "image_weight must be in [0, 1]"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             "device must be 'auto', 'cpu' or 'cuda[:N]'"),
            (self.dist_timeout > 0, "dist_timeout must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(f"{msg} (got {dataclasses.asdict(self)})")
        if self.evaluation == "mmrec":
            fixed = EVALUATION_DEFAULTS["mmrec"]
            wrong = [f"{k} {getattr(self, k)!r}" for k in _MMREC_FIXED
                     if getattr(self, k) != fixed[k]]
            if wrong:
                raise InputError("evaluation 'mmrec' evaluates every epoch with patience 20 "
                                 "and standard NDCG; drop the conflicting option(s): "
                                 + ", ".join(wrong))
        return self

    @classmethod
    def layered(cls, options: dict[str, Any]) -> TrainConfig:
        """A config from explicitly given ``options`` (field names, checked values) over the
        chosen model's defaults and the chosen evaluation convention's
        (``EVALUATION_DEFAULTS``): defaults < model < convention < ``options``."""
        model = options.get("model", "micro")
        if model not in MODELS:
            raise InputError(f"model must be one of {MODELS}, got {model!r}")
        evaluation = options.get("evaluation", "micro")
        if evaluation not in EVALUATIONS:
            raise InputError(f"evaluation must be one of {EVALUATIONS}, got {evaluation!r}")
        return cls(**{**MODEL_DEFAULTS[model], **EVALUATION_DEFAULTS[evaluation], **options})

    @classmethod
    def for_model(cls, model: str = "micro", **options: Any) -> TrainConfig:
        """A config with ``model``'s defaults (``MODEL_DEFAULTS``), and those of
        ``options["evaluation"]`` when given, under ``options``."""
        return cls.layered({"model": model, **options})

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """A config from option names and values (see the module docstring), type-checked;
        ``source`` names where they came from in error messages."""
        return cls(**{key: value for key, value in canonical_options(d, source).items()})


# the command line spells a few options differently from their field names
ALIASES = {"lambda": "lambda_coeff"}
# the options of ``micro-fast eval`` a config file may give: how to evaluate, not what model
EVAL_KEYS = ("data", "format", "ks", "ndcg", "device", "backend", "threads", "checkpoint")
_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
_TYPES["checkpoint"] = "str"


def option_name(key: str) -> str:
    """The field name of a config key (dashes or underscores, or the command-line alias)."""
    key = str(key).replace("-", "_")
    return ALIASES.get(key, key)


def canonical_options(d: dict[str, Any], source: str = "config",
                      allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``d`` with field names as keys and values checked and converted to the fields' types."""
    if not isinstance(d, dict):
        raise InputError(f"{source}: expected a mapping of option names to values, "
                         f"got {type(d).__name__}")
    names = set(allowed) if allowed is not None else set(_TYPES) - {"checkpoint"}
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = option_name(key)
        if name not in names:
            known = ", ".join(sorted(names))
            raise InputError(f"{source}: unknown option {key!r} (known: {known})")
        if name in out:
            raise InputError(f"{source}: option {key!r} given twice")
        out[name] = _convert(name, value, f"{source}: option {key!r}")
    return out


def _convert(name: str, value: Any, where: str) -> Any:
    kind = _TYPES[name]
    optional = kind.endswith("| None")
    kind = kind.removesuffix("| None").strip()
    if value is None:
        if optional:
            return None
        raise InputError(f"{where}: expected {_describe(kind)}, got null")
    if kind.startswith("tuple["):
        item = kind[len("tuple["):].split(",")[0].strip()
        if isinstance(value, str):  # the command-line form, "10,20,50"
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise InputError(f"{where}: expected a list of {_describe(item)}s, got {value!r}")
        return tuple(_scalar(item, v, where) for v in value)
    return _scalar(kind, value, where)


def _scalar(kind: str, value: Any, where: str) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
    elif kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    return number
    elif kind == "str":
        if isinstance(value, str):
            return value
    raise InputError(f"{where}: expected {_describe(kind)}, got {value!r}")


def _describe(kind: str) -> str:
    return {"bool": "true or false", "int": "an integer", "float": "a number",
            "str": "a string"}.get(kind, kind)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The options in a YAML or JSON file (``.json`` is read as JSON, anything else as YAML,
    of which JSON is a subset), not yet checked (``canonical_options`` does that)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--config: {path} not found")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            d = json.loads(text)
        else:
            import yaml

            d = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - json and yaml raise their own error types
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise InputError(f"--config {path}: not valid {kind} ({exc})") from None
    if d is None:  # an empty YAML file
        return {}
    if not isinstance(d, dict):
        raise InputError(f"--config {path}: expected a mapping of option names to values, "
                         f"got {type(d).__name__}")
    return d
