"""The typed training configuration of ``qdelta train``, validated from YAML.

Every field read from a file or from ``--set key=value`` goes through :func:`from_dict`, which
checks types field by field and raises ``ValueError`` / ``TypeError`` naming the dotted field
(``optim.lr``), what it expected, what it got, and how to fix it. Example file::

    name: mqar-qdelta-d128
    seed: 0
    model: {type: qdelta, hidden_size: 128, num_hidden_layers: 2, num_heads: 2}
    data:
      kind: mqar                      # token-level zoology MQAR (qdelta.tasks.mqar)
      vocab_size: 8192
      configs: [[64, 4], [128, 8], [256, 16], [512, 64]]   # (seq_len, num_kv_pairs)
    optim: {lr: [1.0e-3, 3.0e-3], warmup_steps: 100}       # a list of lrs is a sweep
    train: {steps: 2000, batch_size: 64, eval_every: 500, save_every: 500}

Zoology's protocol (``configs/mqar_zoology.yaml``) trains for ``train.epochs`` over fixed sets
(``data.train_sets``: ``[seq_len, num_kv_pairs, num_examples]`` each, generated once and cached, see
:mod:`qdelta.harness.train.mqar_sets`) and tests on fixed ``data.test_sets``; ``train.steps`` is
then derived (epochs x batches per epoch) and may be given only if it equals that.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

MODEL_TYPES = ("qdelta", "gated_deltanet", "delta_net", "linear_attn", "transformer")
DATA_KINDS = ("mqar", "text")
PRECISIONS = ("auto", "fp32", "bf16")
GENERATORS = ("zoology", "qdelta")  # qdelta.tasks.mqar.zoology_multiquery_ar, make_mqar
SCHEDULES = ("warmup_cosine", "epoch_cosine")
DECAY_ON = ("matrices", "all")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ModelSpec:
    type: str = "qdelta"  # one of MODEL_TYPES
    # every other key is passed to the model's config class (hidden_size, num_heads, ...);
    # vocab_size comes from the data, never from here
    overrides: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSpec:
    kind: str = "mqar"  # "mqar" (token ids) or "text" (rendered recall tasks + a tokenizer)
    # mqar
    vocab_size: int = 8192
    # (seq_len, num_kv_pairs) of the fresh data, and of the held-out eval where test_sets is empty
    configs: List[List[int]] = field(default_factory=lambda: [[64, 4], [128, 8], [256, 16], [512, 64]])
    power_a: float = 0.01
    generator: str = "zoology"  # zoology's own draws; "qdelta" (the earlier generator) where V <= L
    # fixed sets (zoology's protocol): [[seq_len, num_kv_pairs, num_examples], ...]; empty: fresh
    # data every step from `configs` and held-out data from the eval section
    train_sets: List[List[int]] = field(default_factory=list)
    test_sets: List[List[int]] = field(default_factory=list)
    seed: Optional[int] = None  # seed of the fixed sets (zoology's DataConfig.seed); None: the run's seed
    cache_dir: Optional[str] = None  # fixed sets cached here; None: $QDELTA_DATA_CACHE or ~/.cache/qdelta/mqar
    # text: [{task: NAME, weight: W, metadata: {...}}]: tasks of qdelta.tasks.TASKS_DIR rendered by
    # their own generators with training seeds (see qdelta.harness.train.text)
    tasks: List[Dict[str, Any]] = field(default_factory=list)
    pool_size: int = 2000  # text: training docs generated per task
    workers: int = 0  # text: processes generating the pools (0: in this process)
    seq_len: int = 256  # text: every example is padded (right) to this many tokens
    tokenizer: Optional[str] = None  # text: a tokenizer folder; None builds one from the tasks
    tokenizer_vocab_size: int = 1024  # text: size of the built tokenizer
    loss_on: str = "answer"  # text: "answer" (answer tokens only) or "all" (every token)


@dataclass
class OptimSpec:
    lr: Union[float, List[float]] = 1e-3  # a list runs a learning-rate sweep
    weight_decay: float = 0.1  # on matrices only (ndim >= 2, embeddings included)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 100  # linear warmup from 0, then cosine to min_lr_ratio * lr
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    # warmup_cosine: per step as above; epoch_cosine: zoology's CosineAnnealingLR(T_max=epochs)
    # stepped once an epoch (needs train.epochs, warmup_steps 0)
    schedule: str = "warmup_cosine"
    weight_decay_on: str = "matrices"  # "matrices" (ndim >= 2) or "all" parameters (zoology)


@dataclass
class TrainSpec:
    steps: Optional[int] = None  # None: 1000, or epochs x batches per epoch with data.train_sets
    epochs: int = 0  # passes over data.train_sets (0: train by steps)
    batch_size: int = 32  # global batch (split across DDP ranks)
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    device: str = "auto"  # auto: CUDA when available
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    save_every: int = 0  # 0: checkpoint only at the end
    keep_checkpoints: int = 2  # how many step checkpoints to keep (0: delete all at the end)
    eval_every_epochs: int = 0  # with epochs: also evaluate after every N-th epoch (zoology: 1)
    early_stop_accuracy: float = 0.0  # stop after an eval whose mean accuracy is > this (0: off; zoology 0.99)
    # capture each batch shape's whole step (forward, backward, clipping, AdamW) as a CUDA graph and replay
    # it (qdelta.harness.train.cuda_graphs); CUDA, one process, MQAR data only. Off until measured.
    cuda_graphs: bool = False


@dataclass
class EvalSpec:
    num_examples: int = 256  # per (seq_len, num_kv_pairs) slice, or per text task
    seed: int = 1_000_003  # evaluation data seed; training data never uses it
    batch_size: int = 64


@dataclass
class TrainConfig:
    name: str = "run"
    output_dir: Optional[str] = None  # default: runs/train/<name>
    seed: int = 0  # model init and the data stream: batch(step) is a pure function of (seed, step)
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)

    @property
    def lrs(self) -> List[float]:
        return list(self.optim.lr) if isinstance(self.optim.lr, list) else [self.optim.lr]

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("runs") / "train" / self.name

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        model = out.pop("model")
        out["model"] = {"type": model["type"], **model["overrides"]}
        return out


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (list, List):
        inner = typing.get_args(tp)[0]
        return "a list of " + {float: "numbers", int: "integers", str: "strings"}.get(inner, "items")
    return {float: "a number", int: "an integer", str: "a string"}.get(tp, str(tp).replace("typing.", ""))


def _convert(value, tp, where: str):
    """Check ``value`` against the annotation ``tp``; returns the converted value."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Union:
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, where)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise TypeError(
            f"{where}: expected {' or '.join(_type_name(o) for o in options)}, got {value!r} ({type(value).__name__})"
        )
    if origin in (list, List):
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise TypeError(
                f"{where}: expected a list, got {value!r} ({type(value).__name__}); write it as [a, b, ...]"
            )
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping, got {value!r} ({type(value).__name__})")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where}: expected an integer, got {value!r} ({type(value).__name__})")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}: expected a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"{where}: expected a string, got {value!r} ({type(value).__name__})")
        return value
    raise TypeError(f"{where}: unsupported annotation {tp}")  # internal: a field type we never use


def from_dict(cls, data, where: str = "config"):
    """Build dataclass ``cls`` from a mapping, checking every field; unknown keys are errors.

    ``ModelSpec`` is special: ``type`` is its field and every other key goes to ``overrides``.
    """
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected a mapping of fields, got {data!r} ({type(data).__name__})")
    if cls is ModelSpec:
        data = dict(data)
        model_type = _convert(data.pop("type", "qdelta"), str, f"{where}.type")
        return ModelSpec(type=model_type, overrides=data)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known fields: {names}")  # where: "config" or a section
    prefix = "" if where == "config" else f"{where}."
    kwargs = {name: _convert(data[name], hints[name], f"{prefix}{name}") for name in names if name in data}
    return cls(**kwargs)


def _check(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{where}: {message}")


def validate(config: TrainConfig) -> TrainConfig:
    """Semantic checks beyond types (ranges, choices, consistency); returns ``config``."""
    m, d, o, t, e = config.model, config.data, config.optim, config.train, config.eval
    _check(m.type in MODEL_TYPES, "model.type", f"expected one of {MODEL_TYPES}, got {m.type!r}")
    _check(
        "vocab_size" not in m.overrides,
        "model.vocab_size",
        "the vocabulary comes from the data (data.vocab_size or the tokenizer); remove it here",
    )
    _check(d.kind in DATA_KINDS, "data.kind", f"expected one of {DATA_KINDS}, got {d.kind!r}")
    if d.kind == "mqar":
        _check(d.vocab_size >= 8, "data.vocab_size", f"expected >= 8, got {d.vocab_size}")
        _check(d.generator in GENERATORS, "data.generator", f"expected one of {GENERATORS}, got {d.generator!r}")
        _check_sets(d)
        _check(len(d.configs) > 0, "data.configs", "expected at least one [seq_len, num_kv_pairs] pair")
        _check(d.power_a > 0, "data.power_a", f"expected > 0, got {d.power_a}")
    else:
        for name in ("train_sets", "test_sets"):
            _check(not getattr(d, name), f"data.{name}", "is for data.kind mqar only; remove it")
        _check(len(d.tasks) > 0, "data.tasks", "expected at least one {task: NAME, weight: W} entry")
        _check(d.pool_size >= 1, "data.pool_size", f"expected >= 1, got {d.pool_size}")
        _check(d.workers >= 0, "data.workers", f"expected >= 0, got {d.workers}")
        _check(d.seq_len >= 8, "data.seq_len", f"expected >= 8, got {d.seq_len}")
        _check(d.loss_on in ("answer", "all"), "data.loss_on", f"expected 'answer' or 'all', got {d.loss_on!r}")
        _check(
            d.tokenizer_vocab_size >= 300,
            "data.tokenizer_vocab_size",
            f"expected >= 300 (256 byte symbols + specials), got {d.tokenizer_vocab_size}",
        )
    _check(
        all(lr > 0 for lr in config.lrs) and len(config.lrs) > 0,
        "optim.lr",
        f"expected a positive number or a non-empty list of them, got {o.lr!r}",
    )
    _check(len(set(config.lrs)) == len(config.lrs), "optim.lr", f"duplicate learning rates in {o.lr}")
    _check(
        len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
        "optim.betas",
        f"expected [beta1, beta2] in [0, 1), got {o.betas}",
    )
    _check(o.weight_decay >= 0, "optim.weight_decay", f"expected >= 0, got {o.weight_decay}")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", f"expected >= 0, got {o.warmup_steps}")
    _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", f"expected in [0, 1], got {o.min_lr_ratio}")
    _check(o.grad_clip >= 0, "optim.grad_clip", f"expected >= 0 (0 disables), got {o.grad_clip}")
    _check(t.batch_size >= 1, "train.batch_size", f"expected >= 1, got {t.batch_size}")
    _check(t.epochs >= 0, "train.epochs", f"expected >= 0, got {t.epochs}")
    if d.kind == "mqar" and d.train_sets:
        _check(t.epochs >= 1, "train.epochs", "data.train_sets needs train.epochs >= 1 (passes over the sets)")
        steps = t.epochs * batches_per_epoch(d.train_sets, t.batch_size)
        _check(
            t.steps in (None, steps),
            "train.steps",
            f"{t.steps} != train.epochs x batches per epoch = {steps}; leave train.steps out",
        )
        t.steps = steps
    else:
        _check(t.epochs == 0, "train.epochs", "needs data.train_sets (fixed sets to pass over); use train.steps")
        t.steps = 1000 if t.steps is None else t.steps
    _check(t.steps >= 1, "train.steps", f"expected >= 1, got {t.steps}")
    _check(o.schedule in SCHEDULES, "optim.schedule", f"expected one of {SCHEDULES}, got {o.schedule!r}")
    if o.schedule == "epoch_cosine":
        _check(t.epochs >= 1, "optim.schedule", "epoch_cosine needs train.epochs >= 1")
        _check(o.warmup_steps == 0, "optim.warmup_steps", "epoch_cosine has no warmup; set warmup_steps: 0")
    _check(
        o.weight_decay_on in DECAY_ON, "optim.weight_decay_on", f"expected one of {DECAY_ON}, got {o.weight_decay_on!r}"
    )
    _check(t.eval_every_epochs >= 0, "train.eval_every_epochs", f"expected >= 0, got {t.eval_every_epochs}")
    _check(
        t.eval_every_epochs == 0 or t.epochs >= 1,
        "train.eval_every_epochs",
        "needs train.epochs >= 1; use train.eval_every (steps) otherwise",
    )
    _check(
        0 <= t.early_stop_accuracy < 1, "train.early_stop_accuracy", f"expected in [0, 1), got {t.early_stop_accuracy}"
    )
    _check(t.precision in PRECISIONS, "train.precision", f"expected one of {PRECISIONS}, got {t.precision!r}")
    _check(t.device in DEVICES, "train.device", f"expected one of {DEVICES}, got {t.device!r}")
    if t.cuda_graphs:
        _check(
            t.device != "cpu",
            "train.cuda_graphs",
            "CUDA graphs need a GPU, but train.device is 'cpu'; set train.cuda_graphs: false or train.device: auto",
        )
        _check(
            d.kind == "mqar",
            "train.cuda_graphs",
            f"needs dense batches (data.kind mqar); data.kind {d.kind!r} pads its batches, whose packing "
            "reads the mask on the host; set train.cuda_graphs: false",
        )
    for name in ("log_every", "eval_every", "save_every", "keep_checkpoints"):
        _check(getattr(t, name) >= 0, f"train.{name}", f"expected >= 0, got {getattr(t, name)}")
    _check(e.num_examples >= 1, "eval.num_examples", f"expected >= 1, got {e.num_examples}")
    _check(e.batch_size >= 1, "eval.batch_size", f"expected >= 1, got {e.batch_size}")
    _check(e.seed != config.seed, "eval.seed", "must differ from the training seed (held-out data)")
    return config


def batches_per_epoch(train_sets: List[List[int]], batch_size: int) -> int:
    """Batches in one pass over fixed sets: each set in order, its last batch possibly short (zoology)."""
    return sum(-(-n // batch_size) for _, _, n in train_sets)


def _check_sets(d: DataSpec) -> None:
    """The (seq_len, num_kv_pairs) settings of data.configs / train_sets / test_sets fit the generator."""
    named = [(f"data.configs[{i}]", c, 2) for i, c in enumerate(d.configs)]
    for name in ("train_sets", "test_sets"):
        named += [(f"data.{name}[{i}]", c, 3) for i, c in enumerate(getattr(d, name))]
    _check(
        bool(d.train_sets) or not d.test_sets,
        "data.test_sets",
        "fixed test sets come with fixed data.train_sets; remove test_sets or add train_sets",
    )
    for where, pair, size in named:
        shape = "[seq_len, num_kv_pairs]" if size == 2 else "[seq_len, num_kv_pairs, num_examples]"
        _check(len(pair) == size, where, f"expected {shape}, got {pair}")
        L, K = pair[0], pair[1]
        _check(K >= 1 and 4 * K <= L, where, f"need 1 <= num_kv_pairs and 4 * num_kv_pairs <= seq_len, got {pair}")
        _check(
            K <= d.vocab_size // 2 - 1,
            where,
            f"{K} distinct keys do not fit in vocab_size {d.vocab_size}; raise data.vocab_size",
        )
        if size == 3:
            _check(pair[2] >= 1, where, f"num_examples must be >= 1, got {pair}")
        if d.generator == "zoology":
            _check(L % 2 == 0, where, f"zoology's MQAR needs an even seq_len, got {pair}")
            _check(
                d.vocab_size > L,
                where,
                f"zoology's MQAR needs vocab_size > seq_len ({d.vocab_size} <= {L}); raise data.vocab_size "
                "or set data.generator: qdelta",
            )
    settings = [(s[0], s[1]) for s in d.test_sets]
    _check(
        len(set(settings)) == len(settings), "data.test_sets", f"two sets share a (seq_len, num_kv_pairs): {settings}"
    )
    if d.seed is not None:
        _check(0 <= d.seed < 2**32, "data.seed", f"expected in [0, 2**32) (numpy's seed range), got {d.seed}")


def _apply_override(data: Dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ValueError(f"--set: expected KEY=VALUE (e.g. optim.lr=3e-3), got {assignment!r}")
    key, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {key}: {part!r} is not a section of the config")
    node[parts[-1]] = value


def load_config(
    path: Union[str, Path, None] = None, overrides: Optional[List[str]] = None, data: Optional[Dict[str, Any]] = None
) -> TrainConfig:
    """Read a YAML file (or a mapping), apply ``KEY=VALUE`` overrides, validate.

    Raises FileNotFoundError for a missing file, ValueError/TypeError naming the bad field.
    """
    if data is None:
        if path is None:
            raise ValueError("load_config: give a YAML path or a mapping (data=...)")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config {str(path)!r} not found; pass an existing YAML file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"training config {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise TypeError(f"config: expected a mapping of fields (name: ..., model: ...), got {data!r}")
    data = dict(data)
    for assignment in overrides or []:
        _apply_override(data, assignment)
    return validate(from_dict(TrainConfig, data))


def dump_config(config: TrainConfig) -> str:
    """The resolved config as YAML (written next to every checkpoint)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
