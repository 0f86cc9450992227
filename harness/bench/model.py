"""Model benchmark behind ``qdelta bench model`` (issue 19): the authors' model against ours, same weights.

One run on one CUDA device: the authors' 340M-shaped Q-Delta model (``AUTHORS_340M``: their
``configs/qdelta_340M.json`` with 24 layers, as their model-level benchmark; their code from
github.com/psmiz/Q-Delta, loaded from an ignored folder named by ``--authors`` or
``QDELTA_AUTHORS_DIR``, never committed) is built with random weights in bf16 and saved; the same
folder is loaded by :func:`qdelta.load_model` as ``ours-paper`` and ``ours-official``. For each
shape (B, T), on the same random token ids:

- training step: ``model(ids, labels=ids)``, backward, fused AdamW step, ``zero_grad`` (median ms of
  ``steps`` after ``warmup``, CUDA events), tokens/s = B*T / step, peak memory (max allocated,
  weights and optimizer state included; GB = 10^9 bytes);
- prefill: ``model(ids)`` under ``torch.no_grad`` (logits included), median ms, tokens/s, peak memory;
- optionally the top ops of one profiled training step by self CUDA time (``torch.profiler``).

Results: ``results/bench/model-<card>.json`` (run metadata, ``rows`` of :class:`Row`, ``profile``) and the
markdown table made from it, rewritten after every measurement so a run cut short keeps what it measured.
"""

from __future__ import annotations

import datetime
import importlib
import json
import logging
import os
import sys
import tempfile
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

log = logging.getLogger(__name__)

AUTHORS_ENV = "QDELTA_AUTHORS_DIR"
# their configs/qdelta_340M.json, 24 layers (the benchmark shape)
AUTHORS_340M = dict(
    attn_mode="chunk",
    hidden_size=1024,
    num_hidden_layers=24,
    num_heads=6,
    head_dim=128,
    expand_v=2,
    conv_size=4,
    hidden_ratio=4,
    intermediate_size=None,
    hidden_act="swish",
    norm_eps=1e-6,
    use_gate=True,
    use_short_conv=True,
    fuse_cross_entropy=True,
    initializer_range=0.02,
    tie_word_embeddings=False,
    vocab_size=32000,
    lamb_bias=0.9,
)
SHAPES = ((8, 2048), (2, 8192))
MODELS = ("authors", "ours-paper", "ours-official")
GB = 1e9


@dataclass
class Row:
    model: str  # one of MODELS
    B: int
    T: int
    train_ms: Optional[float] = None
    train_tokens_s: Optional[float] = None
    train_peak_gb: Optional[float] = None
    prefill_ms: Optional[float] = None
    prefill_tokens_s: Optional[float] = None
    prefill_peak_gb: Optional[float] = None
    error: Optional[str] = None


@dataclass
class Report:
    card: str
    torch: str
    triton: str
    transformers: str
    fla: str
    date: str
    qdelta_commit: str
    authors: str
    steps: int
    warmup: int
    rows: List[Row] = field(default_factory=list)
    profile: Dict[str, List[dict]] = field(default_factory=dict)  # "model B=.. T=.." -> top ops
    notes: List[str] = field(default_factory=list)


def parse_shape(text: str) -> Tuple[int, int]:
    """``"8x2048"`` -> (8, 2048); ValueError naming the expected form otherwise."""
    try:
        B, T = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"shape must be BxT with positive integers, e.g. 8x2048; got {text!r}") from None
    if B <= 0 or T <= 0:
        raise ValueError(f"shape must be BxT with positive integers, e.g. 8x2048; got {text!r}")
    return B, T


def load_authors_classes(folder: Optional[str]):
    """(config class, causal LM class) of the authors' code in ``folder`` (their repository's ``qdelta/``,
    holding ``modeling_qdelta.py`` and ``qdelta_rule/``). Imported as the package ``qdelta_authors``
    without running their ``__init__`` (it would register ``model_type "qdelta"`` over ours)."""
    if not folder:
        raise ValueError(f"no folder with the authors' model code given (--authors or {AUTHORS_ENV})")
    path = Path(folder).resolve()
    if not (path / "modeling_qdelta.py").is_file():
        raise ValueError(f"{path}/modeling_qdelta.py not found (give psmiz/Q-Delta's qdelta/ folder)")
    if "qdelta_authors" not in sys.modules:
        package = types.ModuleType("qdelta_authors")
        package.__path__ = [str(path)]
        sys.modules["qdelta_authors"] = package
    modeling = importlib.import_module("qdelta_authors.modeling_qdelta")
    return modeling.QDeltaConfig, modeling.QDeltaForCausalLM


def save_checkpoint(model, folder: str) -> None:
    """``config.json`` + ``model.safetensors``, the layout ``save_pretrained`` writes (done by hand: the authors'
    list-valued ``_tied_weights_keys`` breaks ``save_pretrained`` of transformers 5.x)."""
    from safetensors.torch import save_file

    model.config.save_pretrained(folder)
    weights = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    save_file(weights, str(Path(folder) / "model.safetensors"), metadata={"format": "pt"})


def _median_ms(fn: Callable[[], None], steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _train_step(model, optimizer, ids):
    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(model, row: Row, ids: torch.Tensor, steps: int, warmup: int) -> None:
    """Fill ``row``'s training and prefill figures for ``model`` on ``ids`` (B, T)."""
    tokens = ids.numel()
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    row.train_ms = _median_ms(_train_step(model, optimizer, ids), steps, warmup)
    row.train_peak_gb = torch.cuda.max_memory_allocated() / GB
    row.train_tokens_s = tokens / row.train_ms * 1e3
    del optimizer
    model.eval()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        row.prefill_ms = _median_ms(lambda: model(input_ids=ids), steps, warmup)
    row.prefill_peak_gb = torch.cuda.max_memory_allocated() / GB
    row.prefill_tokens_s = tokens / row.prefill_ms * 1e3


def profile_step(model, ids: torch.Tensor, top: int = 15) -> List[dict]:
    """The ``top`` ops of one training step (fwd+bwd, no optimizer) by self CUDA time, plus the total."""
    from torch.profiler import ProfilerActivity, profile

    model.train()
    model(input_ids=ids, labels=ids).loss.backward()  # warm
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        model(input_ids=ids, labels=ids).loss.backward()
        torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)

    def cuda_us(e):
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)

    events = [e for e in prof.key_averages() if cuda_us(e) > 0]
    events.sort(key=cuda_us, reverse=True)
    rows = [{"op": "TOTAL", "cuda_ms": sum(cuda_us(e) for e in events) / 1e3, "calls": 0}]
    rows += [{"op": e.key[:120], "cuda_ms": cuda_us(e) / 1e3, "calls": int(e.count)} for e in events[:top]]
    return rows


def _versions() -> Dict[str, str]:
    import transformers
    import triton

    try:
        import fla

        fla_version = getattr(fla, "__version__", "unknown")
    except ImportError:
        fla_version = "not installed"
    return dict(
        torch=torch.__version__, triton=triton.__version__, transformers=transformers.__version__, fla=fla_version
    )


def run_benchmark(
    authors_dir: Optional[str] = None,
    shapes: Sequence[Tuple[int, int]] = SHAPES,
    steps: int = 10,
    warmup: int = 3,
    profile: bool = True,
    on_progress: Optional[Callable[[Report], None]] = None,
    seed: int = 0,
) -> Report:
    """Every measurement of the module docstring; ``on_progress(report)`` after each (files then written)."""
    if not torch.cuda.is_available():
        raise ValueError("qdelta bench model needs a CUDA GPU (none is visible); run it on the GPU machine")
    import qdelta
    from qdelta import fused

    folder = authors_dir or os.environ.get(AUTHORS_ENV)
    report = Report(
        card=torch.cuda.get_device_name(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        qdelta_commit=os.environ.get("QDELTA_COMMIT", "unknown"),
        authors=f"{folder} (github.com/psmiz/Q-Delta)",
        steps=steps,
        warmup=warmup,
        **_versions(),
    )
    report.notes.append(
        "ours: fused glue " + ("on (fla-core modules)" if fused.available() else "OFF: fla-core not importable")
    )
    progress = on_progress or (lambda r: None)
    gen = torch.Generator().manual_seed(seed)
    inputs = {(B, T): torch.randint(0, AUTHORS_340M["vocab_size"], (B, T), generator=gen) for B, T in shapes}
    with tempfile.TemporaryDirectory() as ckpt:
        config_cls, model_cls = load_authors_classes(folder)
        torch.manual_seed(seed)
        authors = model_cls(config_cls(**AUTHORS_340M)).to(device="cuda", dtype=torch.bfloat16)
        save_checkpoint(authors, ckpt)
        report.notes.append(
            f"weights: random (seed {seed}), bf16, the authors' model's state_dict and config saved, loaded by qdelta.load_model"
        )
        for name in MODELS:
            if name == "authors":
                model, authors = authors, None  # measured first, then freed before ours load
            else:
                model = qdelta.load_model(ckpt, device="cuda", dtype=torch.bfloat16, variant=name.split("-")[1])
            for B, T in shapes:
                row = Row(name, B, T)
                report.rows.append(row)
                ids = inputs[B, T].cuda()
                try:
                    measure(model, row, ids, steps, warmup)
                    if profile and (B, T) == tuple(shapes[0]):
                        report.profile[f"{name} B={B} T={T}"] = profile_step(model, ids)
                except Exception as err:  # noqa: BLE001 - one failed measurement must not lose the others
                    log.exception("%s B=%d T=%d failed", name, B, T)
                    row.error = f"{type(err).__name__}: {str(err)[:300]}"
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                log.info("%s", row)
                progress(report)
            del model
            torch.cuda.empty_cache()
    return report


def _fmt(x: Optional[float], digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def to_markdown(r: Report) -> str:
    lines = [
        f"# Model benchmark ({r.card})",
        "",
        f"torch {r.torch}, Triton {r.triton}, transformers {r.transformers}, fla {r.fla}, qdelta {r.qdelta_commit}, "
        f"{r.date}. The authors' 340M-shaped Q-Delta model (hidden 1024, 24 layers, 6 heads, K 128, V 256, "
        f"vocab 32000; {r.authors}) against ours on the same weights, bf16, median of {r.steps} after "
        f"{r.warmup} warm-up. Training step = fwd+bwd+fused AdamW; prefill = forward under no_grad; peak = "
        "max allocated (GB = 10^9 bytes). Ratios: ours / authors (tokens/s; memory: ours / authors).",
        "",
        "| model | B | T | train ms | train tok/s | vs authors | train peak GB | prefill ms | prefill tok/s "
        "| vs authors | prefill peak GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r.rows:
        base = next((x for x in r.rows if x.model == "authors" and (x.B, x.T) == (row.B, row.T)), None)
        lines.append(
            f"| {row.model} | {row.B} | {row.T} | {_fmt(row.train_ms)} | {_fmt(row.train_tokens_s and row.train_tokens_s / 1e3)}k "
            f"| {_ratio(row.train_tokens_s, base and base.train_tokens_s)} | {_fmt(row.train_peak_gb)} "
            f"| {_fmt(row.prefill_ms)} | {_fmt(row.prefill_tokens_s and row.prefill_tokens_s / 1e3)}k "
            f"| {_ratio(row.prefill_tokens_s, base and base.prefill_tokens_s)} | {_fmt(row.prefill_peak_gb)} |"
        )
    errors = [f"- {row.model} B={row.B} T={row.T}: {row.error}" for row in r.rows if row.error]
    if errors:
        lines += ["", "Failed measurements:", ""] + errors
    for key, ops in r.profile.items():
        lines += [
            "",
            f"## Top CUDA ops, one training step (fwd+bwd): {key}",
            "",
            "| op | self CUDA ms | calls |",
            "|---|---|---|",
        ]
        lines += [f"| `{o['op']}` | {o['cuda_ms']:.2f} | {o['calls']} |" for o in ops]
    if r.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


def _card_tag(card: str) -> str:
    return "h200" if "H200" in card else ("h100" if "H100" in card else card.replace(" ", "_").lower())


def write_report(r: Report, out_dir: Path) -> Dict[str, Path]:
    """``model-<card>.json`` and ``.md`` in ``out_dir`` (a rerun replaces them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"model-{_card_tag(r.card)}.json", "md": out_dir / f"model-{_card_tag(r.card)}.md"}
    for key, text in (("json", json.dumps(asdict(r), indent=1) + "\n"), ("md", to_markdown(r))):
        tmp = paths[key].with_suffix(paths[key].suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(paths[key])
    return paths


def load_report(path: Path) -> Report:
    data = json.loads(Path(path).read_text())
    data["rows"] = [Row(**row) for row in data.get("rows", [])]
    return Report(**data)


def summary(r: Report) -> str:
    """One paragraph of the headline figures (the README's model paragraph is this text)."""

    def find(model, B, T) -> Optional[Row]:
        return next((x for x in r.rows if (x.model, x.B, x.T) == (model, B, T)), None)

    parts = []
    for B, T in dict.fromkeys((x.B, x.T) for x in r.rows):
        base = find("authors", B, T)
        if base is None or base.error:
            continue
        figures = [
            f"authors {_fmt(base.train_ms)} ms training step ({_fmt(base.train_tokens_s / 1e3)}k tok/s, "
            f"{_fmt(base.train_peak_gb)} GB peak), {_fmt(base.prefill_ms)} ms prefill"
        ]
        for name in MODELS[1:]:
            row = find(name, B, T)
            if row is None or row.error:
                continue
            figures.append(
                f"{name} {_fmt(row.train_ms)} ms ({_ratio(row.train_tokens_s, base.train_tokens_s)} tok/s, "
                f"{_fmt(row.train_peak_gb)} GB), prefill {_fmt(row.prefill_ms)} ms "
                f"({_ratio(row.prefill_tokens_s, base.prefill_tokens_s)})"
            )
        parts.append(f"B = {B}, T = {T}: " + "; ".join(figures) + ".")
    head = (
        f"{r.card}, torch {r.torch}, Triton {r.triton}, fla {r.fla}, qdelta {r.qdelta_commit}, {r.date[:10]}, "
        "the authors' 340M-shaped model (24 layers) and ours on the same bf16 weights, one run "
        "(ratios: ours over the authors')."
    )
    return " ".join([head] + parts)
