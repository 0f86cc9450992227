"""Model benchmark behind ``qdelta bench model`` (issue 19): reference models against ours, same weights.

One run on one CUDA device, in two families, each a peer built with random bf16 weights and saved by
hand (config.json + model.safetensors), then the same folder loaded by :func:`qdelta.load_model`:

- ``qdelta``: the authors' 340M-shaped Q-Delta model (``AUTHORS_340M``: their ``configs/qdelta_340M.json``
  with 24 layers, as their model-level benchmark; their code from github.com/psmiz/Q-Delta, loaded
  from an ignored folder named by ``--authors`` or ``QDELTA_AUTHORS_DIR``, never committed) as
  ``authors``, against ``ours-paper`` and ``ours-official``;
- ``gdn``: flash-linear-attention 0.6's ``GatedDeltaNetForCausalLM`` (``GDN_340M``, the same shape
  without ``lamb_proj``) as ``fla-gdn``, against ``ours-gdn``. fla's Gated DeltaNet backward refuses
  Hopper with Triton 3.4-3.7.0 (``chunk_bwd_dqkwg``, fla issue #640); :func:`fla_hopper_guard_lifted`
  lifts that check while ``fla-gdn`` is timed (``lift_fla_guard``; the report's notes say so): its
  gradients may be wrong there, its times are what they are.

For each shape (B, T), on the same random token ids for every model:

- training step: ``model(ids, labels=ids)``, backward, fused AdamW step, ``zero_grad`` (CUDA events),
  tokens/s = B*T / step, peak memory (max allocated, the model's weights and optimizer state included;
  GB = 10^9 bytes);
- prefill: ``model(ids)`` under ``torch.no_grad`` (logits included), ms, tokens/s, peak memory.

A family's models stay loaded together and take turns (:func:`take_turns`): ``rounds`` rounds, in each
every model times ``steps`` calls (median), the order reversed every other round, so that a drift in the
machine's speed falls on all of them alike; ``warmup`` calls precede a model's first round. A figure is
the median of its rounds' medians (the rounds' values are kept). Peak memory, from the first round,
counts the model's own resident tensors and what its calls allocate, not the other models';
- optionally the top ops of one profiled training step by self CUDA time (``torch.profiler``);
- greedy generation (:mod:`.generation`): ``generate`` of N new tokens after B prompts of T tokens,
  one shape per run (``gen_shape``, default 64 x 2048 x 128), its own rows (:class:`GenRow`).

``groups`` picks what a run measures: ``qdelta`` and ``gdn`` the training and prefill figures of that
family, ``gen`` the generation of the ``qdelta`` family, ``gen-gdn`` that of the ``gdn`` family; a family
is built only when one of its groups is asked for. Ratios compare each model with its family's peer
(``PEERS``), tokens/s over tokens/s. A peer that cannot be built (fla not installed, no ``--authors``)
gives ``error`` rows for its whole family; a failed measurement gives an ``error`` row; neither stops the run.

Results: ``results/bench/model-<card>.json`` (run metadata, ``rows`` of :class:`Row` for training and
prefill, ``gen`` of :class:`GenRow`, ``profile``) and the markdown table made from it, rewritten after
every measurement so a run cut short keeps what it measured.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import logging
import os
import statistics
import sys
import tempfile
import types
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from qdelta.generation import GreedyDecoder

from .generation import GEN_SHAPE, GenRow, all_logits_note, measure_generation, median_ms

log = logging.getLogger(__name__)

AUTHORS_ENV = "QDELTA_AUTHORS_DIR"
# the 340M shape both families share: the authors' configs/qdelta_340M.json with 24 layers (the issue's shape)
SHAPE_340M = dict(
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
)
AUTHORS_340M = dict(SHAPE_340M, lamb_bias=0.9)
# flash-linear-attention 0.6's GatedDeltaNetConfig at the same shape (Gated DeltaNet has no lam)
GDN_340M = dict(SHAPE_340M, fuse_norm=True, fuse_swiglu=True)
SHAPES = ((8, 2048), (2, 8192))
MODELS = ("authors", "ours-paper", "ours-official")
FAMILIES = {"qdelta": MODELS, "gdn": ("fla-gdn", "ours-gdn")}
PEERS = {name: family[0] for family in FAMILIES.values() for name in family}  # model -> the model it is compared to
GRAPHS = "+graphs"  # a generation row of ours by qdelta.generation.GreedyDecoder (decode step as a CUDA graph)
GROUPS = ("qdelta", "gdn", "gen", "gen-gdn")
FLA_INSTALL = (
    "pip install --no-deps flash-linear-attention==0.6.0 fla-core==0.6.0 einops  (or pip install -e '.[bench]')"
)
GB = 1e9
LIFTED_NOTE = (
    "fla-gdn: fla 0.6's Hopper refusal of its gated chunk_bwd_dqkwg with Triton < 3.7.1 (fla #640) "
    "lifted for timing; its gradients may be wrong here, its times stand"
)


@dataclass
class Row:
    model: str  # a name of FAMILIES
    B: int
    T: int
    train_ms: Optional[float] = None
    train_tokens_s: Optional[float] = None
    train_peak_gb: Optional[float] = None
    prefill_ms: Optional[float] = None
    prefill_tokens_s: Optional[float] = None
    prefill_peak_gb: Optional[float] = None
    error: Optional[str] = None
    train_ms_rounds: List[float] = field(default_factory=list)  # each round's median
    prefill_ms_rounds: List[float] = field(default_factory=list)
    train_syncs: Optional[int] = None  # times one call waited for the GPU (torch's sync debug mode)
    prefill_syncs: Optional[int] = None


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
    gen: List[GenRow] = field(default_factory=list)  # greedy generation, one shape per run
    gen_repeats: int = 0
    groups: List[str] = field(default_factory=lambda: list(GROUPS))
    rounds: int = 1  # 1: a run before the models took turns (each measured alone, one median)


def parse_groups(text: str) -> Tuple[str, ...]:
    """``"gdn,gen"`` -> ("gdn", "gen") (in ``GROUPS`` order); ValueError naming the choices otherwise."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [n for n in names if n not in GROUPS]
    if not names or unknown:
        raise ValueError(f"--only takes a comma-separated subset of {', '.join(GROUPS)}; got {text!r}")
    return tuple(g for g in GROUPS if g in names)


def plan(groups: Sequence[str], with_gen: bool = True) -> Dict[str, Tuple[bool, bool]]:
    """family -> (measure training and prefill, measure generation), for the families ``groups`` need
    (``with_gen=False``: the generation groups are dropped, as for ``gen_shape=None``)."""
    wanted = {
        "qdelta": ("qdelta" in groups, with_gen and "gen" in groups),
        "gdn": ("gdn" in groups, with_gen and "gen-gdn" in groups),
    }
    return {family: todo for family, todo in wanted.items() if any(todo)}


def error_rows(
    report: "Report",
    names: Sequence[str],
    shapes: Sequence[Tuple[int, int]],
    gen_shape: Optional[Tuple[int, int, int]],
    message: str,
) -> None:
    """Append an ``error`` row for each model of ``names`` at each shape (and the generation shape)."""
    for name in names:
        report.rows += [Row(name, B, T, error=message) for B, T in shapes]
        if gen_shape:
            report.gen.append(GenRow(name, *gen_shape, error=message))


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


def load_fla_gdn_classes():
    """(config class, causal LM class) of flash-linear-attention 0.6's Gated DeltaNet; ImportError with the
    install command when fla is missing. Importing ``fla`` registers fla's configs with transformers' Auto
    classes over ours: call :func:`reclaim_auto_classes` after."""
    try:
        from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM
    except ImportError as err:
        raise ImportError(f"fla's GatedDeltaNetForCausalLM is not importable ({err}); install: {FLA_INSTALL}") from err
    return GatedDeltaNetConfig, GatedDeltaNetForCausalLM


def reclaim_auto_classes() -> List[str]:
    """Register our model types with transformers' Auto classes again; returns the types that another
    package (``import fla``) had registered over ours, sorted."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from qdelta.modeling import MODEL_CLASSES, _register

    taken = sorted(t for t, (_, causal) in MODEL_CLASSES.items() if CONFIG_MAPPING[t] is not causal.config_class)
    _register()
    return taken


@contextlib.contextmanager
def fla_hopper_guard_lifted(lift: bool) -> Iterator[bool]:
    """Inside the block, fla 0.6's refusal of its gated ``chunk_bwd_dqkwg`` on Hopper with Triton 3.4-3.7.0
    (fla issue #640; ``fla.ops.common.chunk_o`` reads ``TRITON_ABOVE_3_7_1`` at call time) is lifted when
    ``lift``; yields whether the refusal would have fired here (False without fla)."""
    try:
        chunk_o = importlib.import_module("fla.ops.common.chunk_o") if lift else None
    except ImportError:
        chunk_o = None
    if chunk_o is None:
        yield False
        return
    before = chunk_o.TRITON_ABOVE_3_7_1
    chunk_o.TRITON_ABOVE_3_7_1 = True
    try:
        yield bool(chunk_o.IS_NVIDIA_HOPPER and chunk_o.TRITON_ABOVE_3_4_0 and not before)
    finally:
        chunk_o.TRITON_ABOVE_3_7_1 = before


def save_checkpoint(model, folder: str) -> None:
    """``config.json`` + ``model.safetensors``, the layout ``save_pretrained`` writes (done by hand: the authors'
    list-valued ``_tied_weights_keys`` breaks ``save_pretrained`` of transformers 5.x; fla's models are saved
    the same way)."""
    from safetensors.torch import save_file

    model.config.save_pretrained(folder)
    weights = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    save_file(weights, str(Path(folder) / "model.safetensors"), metadata={"format": "pt"})


def _train_step(model, optimizer, ids):
    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def take_turns(calls: Dict[str, Callable[[int], float]], rounds: int) -> Tuple[Dict[str, List[float]], Dict[str, str]]:
    """``calls[name](round)`` for every name, once per round, the names taking turns in their order, reversed
    every other round. Returns each name's values and the errors of names that raised (a name that raised
    is left out of later rounds)."""
    names, values, errors = list(calls), {name: [] for name in calls}, {}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            if name in errors:
                continue
            try:
                values[name].append(calls[name](r))
            except Exception as err:  # noqa: BLE001 - one failed model must not lose the others
                log.exception("%s failed in round %d", name, r)
                errors[name] = f"{type(err).__name__}: {str(err)[:300]}"
    return values, errors


def resident_bytes(*owners) -> int:
    """Bytes of the distinct tensors of modules (parameters, buffers) and optimizers (state)."""
    seen = {}
    for owner in owners:
        if isinstance(owner, torch.nn.Module):
            tensors = [*owner.parameters(), *owner.buffers()]
        else:
            tensors = [t for state in owner.state.values() for t in state.values() if torch.is_tensor(t)]
        for t in tensors:
            seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def _timed(fn: Callable[[], object], steps: int, warmup: int, resident: Callable[[], int]) -> Tuple[float, float]:
    """(median ms of ``steps`` calls after ``warmup``, peak GB: what the calls allocated beyond the memory
    in use before them, plus ``resident()`` bytes, the caller's own share of that memory)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    ms = median_ms(fn, steps, 0)
    return ms, (torch.cuda.max_memory_allocated() - before + resident()) / GB


def _record(rows: Dict[str, Row], kind: str, times: Dict[str, List[float]], errors: Dict[str, str], tokens: int):
    """``<kind>_ms_rounds``, ``<kind>_ms`` (their median) and ``<kind>_tokens_s`` of each row (kind: train, prefill)."""
    for name, values in times.items():
        setattr(rows[name], f"{kind}_ms_rounds", values)
        if values and name not in errors:
            ms = statistics.median(values)
            setattr(rows[name], f"{kind}_ms", ms)
            setattr(rows[name], f"{kind}_tokens_s", tokens / ms * 1e3)


def count_syncs(fn: Callable[[], object]) -> int:
    """How many times one call of ``fn`` makes the host wait for the GPU (torch's CUDA sync debug mode
    warns at each: ``.item()``, copies to or from pageable host memory, ``nonzero``, ...)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in seen)


def measure_family(models, rows: Dict[str, Row], ids: torch.Tensor, rounds: int, steps: int, warmup: int, guard):
    """Fill ``rows[name]``'s training and prefill figures for every model of ``models`` (name -> model, all
    loaded) on ``ids`` (B, T), the models taking turns (:func:`take_turns`); ``guard(name)``: a context
    every call of that model runs in."""
    tokens = ids.numel()
    optimizers = {}
    for name, model in models.items():
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        optimizers[name] = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def turn(name, fn, resident, kind):
        def call(r):
            with guard(name):
                if r > 0:
                    return median_ms(fn, steps, 0)
                ms, peak = _timed(fn, steps, warmup, resident)
                setattr(rows[name], f"{kind}_peak_gb", peak)
                setattr(rows[name], f"{kind}_syncs", count_syncs(fn))  # one more call, untimed
                return ms

        return call

    train = {
        name: turn(name, _train_step(m, optimizers[name], ids), lambda m=m, o=optimizers[name]: resident_bytes(m, o),
                   "train")
        for name, m in models.items()
    }  # fmt: skip
    times, errors = take_turns(train, rounds)
    _record(rows, "train", times, errors, tokens)
    for model in models.values():
        model.zero_grad(set_to_none=True)
        model.eval()
    train.clear()  # its calls hold the optimizers: their state goes with them
    optimizers.clear()
    torch.cuda.empty_cache()

    def prefill(m):
        def fn():
            with torch.no_grad():
                return m(input_ids=ids)

        return fn

    calls = {name: turn(name, prefill(m), lambda m=m: resident_bytes(m), "prefill") for name, m in models.items()}
    times, prefill_errors = take_turns(calls, rounds)
    _record(rows, "prefill", times, prefill_errors, tokens)
    for name in models:
        failed = [f"{what}: {e[name]}" for what, e in (("training", errors), ("prefill", prefill_errors)) if name in e]
        rows[name].error = "; ".join(failed) or None
    torch.cuda.empty_cache()


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


def _build_peer(family: str, authors_dir: Optional[str], folder: str, seed: int, report: "Report"):
    """The family's peer model (random weights, seed ``seed``, bf16 on CUDA), saved into ``folder``."""
    if family == "qdelta":
        config_cls, model_cls = load_authors_classes(authors_dir)
        kwargs, what = AUTHORS_340M, "the authors' model"
    else:
        config_cls, model_cls = load_fla_gdn_classes()
        kwargs, what = GDN_340M, "fla's GatedDeltaNetForCausalLM"
    torch.manual_seed(seed)
    peer = model_cls(config_cls(**kwargs)).to(device="cuda", dtype=torch.bfloat16)
    taken = reclaim_auto_classes()
    if taken:
        report.notes.append(
            f"building {what} registered {', '.join(taken)} over ours in transformers' Auto classes; ours re-registered"
        )
    save_checkpoint(peer, folder)
    report.notes.append(
        f"{family}: weights random (seed {seed}), bf16, {what}'s state_dict and config saved, loaded by qdelta.load_model"
    )
    return peer


def _measure_generation(model, name, report, gen_shape, gen_ids, gen_repeats, progress) -> None:
    """Generation rows of one model: ``generate``, and for ours also through :class:`GreedyDecoder`."""
    row = GenRow(name, *gen_shape)
    report.gen.append(row)
    note = all_logits_note(model, name)
    if note:
        report.notes.append(note)
    rows = [(row, None)]
    if name != PEERS[name]:  # ours: also through GreedyDecoder
        rows.append((GenRow(name + GRAPHS, *gen_shape), GreedyDecoder(model, cuda_graph=True)))
        report.gen.append(rows[-1][0])
    for row, decoder in rows:
        try:
            measure_generation(model, row, gen_ids.cuda(), gen_repeats, decoder)
        except Exception as err:  # noqa: BLE001 - e.g. the authors' generate on transformers 5.x
            log.exception("%s generation failed", row.model)
            row.error = f"{type(err).__name__}: {str(err)[:300]}"
        torch.cuda.empty_cache()
        log.info("%s", row)
        progress(report)


def _family_models(family, peer, ckpt, report, family_shapes, family_gen, progress) -> Dict[str, torch.nn.Module]:
    """The peer and ours loaded from ``ckpt``, by name; a model that does not load gets error rows."""
    import qdelta

    names = FAMILIES[family]
    models = {names[0]: peer}
    for name in names[1:]:
        try:
            variant = name.split("-")[1] if family == "qdelta" else None
            models[name] = qdelta.load_model(ckpt, device="cuda", dtype=torch.bfloat16, variant=variant)
        except Exception as err:  # noqa: BLE001
            log.exception("%s: loading failed", name)
            error_rows(report, [name], family_shapes, family_gen, f"{type(err).__name__}: {str(err)[:300]}")
            progress(report)
    return models


def run_benchmark(
    authors_dir: Optional[str] = None,
    shapes: Sequence[Tuple[int, int]] = SHAPES,
    steps: int = 5,
    warmup: int = 3,
    profile: bool = True,
    on_progress: Optional[Callable[[Report], None]] = None,
    seed: int = 0,
    groups: Sequence[str] = GROUPS,
    gen_shape: Optional[Tuple[int, int, int]] = GEN_SHAPE,
    gen_repeats: int = 3,
    lift_fla_guard: bool = True,
    rounds: int = 3,
) -> Report:
    """Every measurement of the module docstring that ``groups`` asks for (``gen_shape=None``: no generation);
    ``on_progress(report)`` after each (files then written)."""
    if not torch.cuda.is_available():
        raise ValueError("qdelta bench model needs a CUDA GPU (none is visible); run it on the GPU machine")
    from qdelta import fused

    folder = authors_dir or os.environ.get(AUTHORS_ENV)
    report = Report(
        card=torch.cuda.get_device_name(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        qdelta_commit=os.environ.get("QDELTA_COMMIT", "unknown"),
        authors=f"{folder} (github.com/psmiz/Q-Delta)",
        steps=steps,
        warmup=warmup,
        gen_repeats=gen_repeats,
        groups=list(groups),
        rounds=rounds,
        **_versions(),
    )
    report.notes.append(
        "ours: fused glue " + ("on (fla-core modules)" if fused.available() else "OFF: fla-core not importable")
    )
    progress = on_progress or (lambda r: None)

    @contextlib.contextmanager
    def guard(name):
        with fla_hopper_guard_lifted(lift_fla_guard and name == "fla-gdn") as lifted:
            if lifted and LIFTED_NOTE not in report.notes:
                report.notes.append(LIFTED_NOTE)
            yield

    gen = torch.Generator().manual_seed(seed)
    inputs = {(B, T): torch.randint(0, AUTHORS_340M["vocab_size"], (B, T), generator=gen) for B, T in shapes}
    gen_ids = torch.randint(0, AUTHORS_340M["vocab_size"], gen_shape[:2], generator=gen) if gen_shape else None
    for family, (train, generate) in plan(groups, with_gen=gen_shape is not None).items():
        family_shapes = tuple(shapes) if train else ()
        family_gen = gen_shape if generate else None
        with tempfile.TemporaryDirectory() as ckpt:
            try:
                peer = _build_peer(family, folder, ckpt, seed, report)
            except Exception as err:  # noqa: BLE001 - no peer, no weights: the family's rows say why
                log.exception("%s: the peer model could not be built", family)
                error_rows(
                    report, FAMILIES[family], family_shapes, family_gen, f"{type(err).__name__}: {str(err)[:300]}"
                )
                progress(report)
                continue
            models = _family_models(family, peer, ckpt, report, family_shapes, family_gen, progress)
            del peer
        for B, T in family_shapes:
            rows = {name: Row(name, B, T) for name in models}
            report.rows.extend(rows.values())
            measure_family(models, rows, inputs[B, T].cuda(), rounds, steps, warmup, guard)
            for row in rows.values():
                log.info("%s", row)
            progress(report)
        for name, model in models.items():
            if profile and family_shapes:
                B, T = family_shapes[0]
                try:
                    with guard(name):
                        report.profile[f"{name} B={B} T={T}"] = profile_step(model, inputs[B, T].cuda())
                except Exception as err:  # noqa: BLE001 - the profile is an extra; the rows stand
                    log.exception("%s: profile failed", name)
                    report.notes.append(f"{name}: profile failed: {type(err).__name__}: {str(err)[:200]}")
                model.zero_grad(set_to_none=True)
                progress(report)
            if family_gen:
                _measure_generation(model, name, report, family_gen, gen_ids, gen_repeats, progress)
        del models
        torch.cuda.empty_cache()
    return report


def _fmt(x: Optional[float], digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


FAMILY_TITLES = {
    "qdelta": "Q-Delta: the authors' model (github.com/psmiz/Q-Delta) and ours",
    "gdn": "Gated DeltaNet: flash-linear-attention's GatedDeltaNetForCausalLM and ours",
}


def _peer_row(rows, row):
    """The row of ``row``'s peer at the same shape (None when absent)."""
    key = lambda x: (x.B, x.T, getattr(x, "new", None))  # noqa: E731
    peer = PEERS.get(row.model.removesuffix(GRAPHS))
    return next((x for x in rows if x.model == peer and key(x) == key(row)), None)


def _ms(median: Optional[float], rounds: Sequence[float]) -> str:
    """A figure, with the range of its rounds' medians when there were several."""
    if median is None or len(rounds) < 2:
        return _fmt(median)
    return f"{_fmt(median)} [{_fmt(min(rounds))}-{_fmt(max(rounds))}]"


def _k(x: Optional[float]) -> str:
    return "—" if x is None else f"{x / 1e3:.1f}k"


def _train_table(rows: List[Row], peer: str) -> List[str]:
    syncs = any(x.train_syncs is not None or x.prefill_syncs is not None for x in rows)  # runs before: none
    head = (
        f"| model | B | T | train ms | train tok/s | vs {peer} | train peak GB | prefill ms | prefill tok/s "
        f"| vs {peer} | prefill peak GB |"
    )
    lines = [head + (" GPU waits, train / prefill |" if syncs else ""), "|---" * (12 if syncs else 11) + "|"]
    for row in rows:
        base = _peer_row(rows, row)
        line = (
            f"| {row.model} | {row.B} | {row.T} | {_ms(row.train_ms, row.train_ms_rounds)} | {_k(row.train_tokens_s)} "
            f"| {_ratio(row.train_tokens_s, base and base.train_tokens_s)} | {_fmt(row.train_peak_gb)} "
            f"| {_ms(row.prefill_ms, row.prefill_ms_rounds)} | {_k(row.prefill_tokens_s)} "
            f"| {_ratio(row.prefill_tokens_s, base and base.prefill_tokens_s)} | {_fmt(row.prefill_peak_gb)} |"
        )
        if syncs:
            line += f" {_fmt(row.train_syncs, 0)} / {_fmt(row.prefill_syncs, 0)} |"
        lines.append(line)
    return lines


def _gen_table(rows: List[GenRow], peer: str) -> List[str]:
    lines = [
        f"| model | B | T | new | prefill + 1st ms | total ms | decode tok/s | vs {peer} | end-to-end tok/s "
        f"| vs {peer} | peak GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        base = _peer_row(rows, row)
        lines.append(
            f"| {row.model} | {row.B} | {row.T} | {row.new} | {_fmt(row.first_ms)} | {_fmt(row.total_ms)} "
            f"| {_k(row.decode_tokens_s)} | {_ratio(row.decode_tokens_s, base and base.decode_tokens_s)} "
            f"| {_k(row.e2e_tokens_s)} | {_ratio(row.e2e_tokens_s, base and base.e2e_tokens_s)} | {_fmt(row.peak_gb)} |"
        )
    return lines


def _timing(r: Report) -> str:
    if r.rounds < 2:
        return f"median of {r.steps} after {r.warmup} warm-up"
    return (
        f"a family's models loaded together and taking turns, {r.rounds} rounds of {r.steps} calls each (the order "
        f"reversed every other round), after {r.warmup} warm-up calls; ms = the median of the rounds' medians, "
        "[the lowest-highest round]"
    )


def to_markdown(r: Report) -> str:
    lines = [
        f"# Model benchmark ({r.card})",
        "",
        f"torch {r.torch}, Triton {r.triton}, transformers {r.transformers}, fla {r.fla}, qdelta {r.qdelta_commit}, "
        f"{r.date}; groups {', '.join(r.groups)}. 340M-shaped models (hidden 1024, 24 layers, 6 heads, K 128, "
        f"V 256, vocab 32000; the authors' code: {r.authors}): each peer with random weights, saved, and ours "
        f"loaded from the same folder; bf16, {_timing(r)}. Training step = "
        "fwd+bwd+fused AdamW; prefill = forward under no_grad; peak = max allocated (GB = 10^9 bytes). "
        "Ratios: a model's tokens/s over its peer's (the column names the peer)."
        + (
            " GPU waits: how often one call made the host wait for the GPU (torch's CUDA sync debug mode)."
            if any(x.train_syncs is not None or x.prefill_syncs is not None for x in r.rows)
            else ""
        ),
    ]
    for family, names in FAMILIES.items():
        rows = [x for x in r.rows if x.model in names]
        if rows:
            lines += ["", f"## {FAMILY_TITLES[family]}", ""] + _train_table(rows, names[0])
    for family, names in FAMILIES.items():
        rows = [x for x in r.gen if x.model.removesuffix(GRAPHS) in names]
        if rows:
            lines += [
                "",
                f"## Greedy generation: {FAMILY_TITLES[family]}",
                "",
                f"HF `generate` (`{GRAPHS}`: ours by qdelta.generation.GreedyDecoder, the decoding step replayed "
                "as a CUDA graph captured in the warm-up call), greedy, recurrent cache, every sequence runs to "
                f"`new` tokens; median of "
                f"{r.gen_repeats} after one warm-up. prefill + 1st = the same call with one new token; decode "
                "tok/s = B x (new - 1) / (total ms - prefill + 1st ms): the new - 1 single-token steps; end-to-end tok/s = "
                "B x new / total.",
                "",
            ] + _gen_table(rows, names[0])
    errors = [f"- {row.model} B={row.B} T={row.T}: {row.error}" for row in r.rows if row.error]
    errors += [f"- {row.model} generate B={row.B} T={row.T} new={row.new}: {row.error}" for row in r.gen if row.error]
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
    data["gen"] = [GenRow(**row) for row in data.get("gen", [])]
    return Report(**data)


SUMMARY_BEGIN, SUMMARY_END = (
    "<!-- model numbers: generated by qdelta.harness.bench.model summary -->",
    "<!-- end model -->",
)


def summary(r: Report) -> str:
    """One paragraph of the headline figures (the README's model paragraph is this text: regenerate it with
    ``python -m qdelta.harness.bench.model summary results/bench/model-h200.json``)."""

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
    for family, names in FAMILIES.items():
        rows = [x for x in r.gen if x.model.removesuffix(GRAPHS) in names and not x.error]
        base = next((x for x in rows if x.model == names[0]), None)
        if rows:
            x = rows[0]
            figures = [
                f"{g.model} {_k(g.decode_tokens_s)} decode tok/s"
                + (f" ({_ratio(g.decode_tokens_s, base.decode_tokens_s)})" if base and g is not base else "")
                for g in rows
            ]
            parts.append(f"Greedy generation, {x.B} prompts of {x.T} tokens + {x.new}: " + "; ".join(figures) + ".")
    head = (
        f"{r.card}, torch {r.torch}, Triton {r.triton}, fla {r.fla}, qdelta {r.qdelta_commit}, {r.date[:10]}, "
        "the authors' 340M-shaped model (24 layers) and ours on the same bf16 weights, one run "
        "(ratios: ours over the family's peer, the authors' model or fla's Gated DeltaNet)."
    )
    return " ".join([head] + parts)


def _main(argv: List[str]) -> int:
    if len(argv) != 2 or argv[0] != "summary":
        print("usage: python -m qdelta.harness.bench.model summary MODEL_JSON", file=sys.stderr)
        return 2
    print(SUMMARY_BEGIN + "\n" + summary(load_report(Path(argv[1]))) + "\n" + SUMMARY_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
