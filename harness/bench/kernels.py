"""Kernel benchmark behind ``qdelta bench kernels`` (issues 3, 18): timings, bandwidth, result files.

One run times, on identical inputs (bf16, 32,768 tokens a batch, median ms of
``triton.testing.do_bench``): our Triton ``chunk_qdelta`` (``qdelta-paper``, ``qdelta-official``),
the authors' chunk kernel ``chunk_qdelta_rule`` (``authors``; their public repository's
``qdelta/qdelta_rule`` folder, loaded from an ignored folder named by ``--authors`` or
``QDELTA_AUTHORS_DIR``; skipped with the reason in the notes when absent), flash-linear-attention's
``chunk_gated_delta_rule`` (``fla-gdn``) and PyTorch SDPA flash attention at the same model width
(``sdpa``). The linear-attention kernels run with the q/k l2-norm inside the call
(``qk_l2norm=True``, what the models call) and on the same q, k without it (they are unit rows
already, so both modes do the same work apart from the norm). Each row has the forward with grad
enabled (training: tensors kept for the backward), the forward under ``no_grad`` (prefill) and
forward+backward. Decoding: the recurrent step at 64 sequences as the model calls it (the public
wrapper, fp32 state, ``use_qk_l2norm=True``) beside the kernel alone and fla's fused recurrent Gated
DeltaNet call on the same inputs, with the kernel's state bandwidth next to a measured copy.
Results go to ``results/bench/kernels-<card>.json`` (run metadata and ``rows``, a list of
``{"config", "T", "impl", "qk_l2norm", "fwd_ms", "fwd_bwd_ms", "fwd_nograd_ms", "batch"}``) and the
markdown table made from it.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import torch

log = logging.getLogger(__name__)

HEAD_CONFIGS = {"340M": (6, 128, 256), "1.3B": (6, 256, 512)}  # (H, K, V), DESIGN §3
SDPA_HEADS = {"340M": (16, 64), "1.3B": (16, 128)}  # same width as the model (d = 1024 / 2048)
LENGTHS = (2048, 4096, 8192, 16384)
TOKENS = 32768
DECODE_SEQUENCES = 64
IMPLS = ("qdelta-paper", "qdelta-official", "authors", "fla-gdn", "sdpa")
AUTHORS_ENV = "QDELTA_AUTHORS_DIR"  # folder holding the authors' ``qdelta_rule`` package (never committed)


@dataclass
class Row:
    config: str
    T: int
    impl: str  # one of IMPLS
    qk_l2norm: bool  # the q/k l2-norm inside the call (False for sdpa: no norm)
    fwd_ms: Optional[float]  # forward, grad enabled (training)
    fwd_bwd_ms: Optional[float]
    fwd_nograd_ms: Optional[float] = None  # forward under torch.no_grad (prefill)
    batch: int = 0


@dataclass
class DecodeRow:
    config: str
    variant: str
    sequences: int
    step_us: float  # the public call as the model makes it (use_qk_l2norm=True, fp32 state), host work included
    kernel_us: float  # the kernel launch alone, same inputs
    state_bytes: int
    gbps: float
    fraction_of_copy: float
    fla_call_us: Optional[float] = None  # fla's fused_recurrent_gated_delta_rule call on the same inputs


@dataclass
class Report:
    card: str
    torch: str
    triton: str
    date: str
    fla: str
    copy_gbps: float
    rows: List[Row] = field(default_factory=list)
    decode: List[DecodeRow] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    fla_note: Optional[str] = None  # set where fla's backward guard was lifted for timing
    authors: str = ""  # where the authors' kernel came from ("" when it was not measured)
    launch_overrides: str = ""  # launch.OVERRIDES in force (JSON; kernels/triton/launch.py), "" for the table
    # the launch settings in force, per head config and kernel (defaults and overrides resolved): tells runs of
    # code with other defaults apart ({} in reports written before it was recorded)
    launch_settings: Dict[str, Dict[str, Dict]] = field(default_factory=dict)


def _bench(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def copy_bandwidth_gbps(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy: bytes read + bytes written over the median time."""
    src = torch.randn(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def _inputs(B, T, H, K, V, requires_grad=False, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen, device="cuda")  # noqa: E731
    q = torch.nn.functional.normalize(rnd(B, T, H, K), dim=-1).bfloat16()
    k = torch.nn.functional.normalize(rnd(B, T, H, K), dim=-1).bfloat16()
    v = rnd(B, T, H, V).bfloat16()
    g = torch.nn.functional.logsigmoid(rnd(B, T, H) + 3).bfloat16()  # alpha in (0.9, 1) mostly
    beta = torch.rand(B, T, H, generator=gen, device="cuda").bfloat16()
    lam = torch.rand(B, T, H, generator=gen, device="cuda").bfloat16()
    ts = [q, k, v, g, beta, lam]
    return [t.requires_grad_(requires_grad) for t in ts]


def _time_three(call, do) -> tuple:
    """(fwd with grad enabled, fwd+bwd, fwd under no_grad) ms of ``call() -> output``."""
    fwd = _bench(call)
    fwdbwd = _bench(lambda: call().backward(do))
    with torch.no_grad():
        nograd = _bench(call)
    return fwd, fwdbwd, nograd


def time_ours(B, T, H, K, V, variant="paper", qk_l2norm=True):
    """Our ``chunk_qdelta`` as a layer calls it (the public op, ``use_qk_l2norm`` as given)."""
    from qdelta.kernels import chunk_qdelta

    q, k, v, g, beta, lam = _inputs(B, T, H, K, V, requires_grad=True)
    do = torch.randn(B, T, H, V, device="cuda").bfloat16()
    return _time_three(lambda: chunk_qdelta(q, k, v, g, beta, lam, variant=variant, use_qk_l2norm=qk_l2norm)[0], do)


def load_authors(folder: Optional[str]):
    """The authors' ``chunk_qdelta_rule`` from ``folder`` (which holds their ``qdelta_rule`` package, copied
    from github.com/psmiz/Q-Delta ``qdelta/qdelta_rule``); raises ValueError naming what is missing."""
    if not folder:
        raise ValueError(f"no folder with the authors' kernel given (--authors or {AUTHORS_ENV})")
    path = Path(folder)
    if not (path / "qdelta_rule" / "__init__.py").is_file():
        raise ValueError(f"{path}/qdelta_rule/__init__.py not found (copy psmiz/Q-Delta's qdelta/qdelta_rule there)")
    if str(path.resolve()) not in sys.path:
        sys.path.insert(0, str(path.resolve()))
    return importlib.import_module("qdelta_rule").chunk_qdelta_rule


def time_authors(fn, B, T, H, K, V, qk_l2norm=True):
    """The authors' chunk kernel on the same inputs (lam as their ``lq``)."""
    q, k, v, g, beta, lam = _inputs(B, T, H, K, V, requires_grad=True)
    do = torch.randn(B, T, H, V, device="cuda").bfloat16()
    return _time_three(lambda: fn(q, k, v, g, beta, lam, use_qk_l2norm_in_kernel=qk_l2norm)[0], do)


def batch_size(T: int) -> int:
    """Sequences a batch at length ``T`` (a batch is ``TOKENS`` tokens); an error naming the problem where
    ``T`` does not divide it (the benchmark, tune.py and profile.py take their lengths through this)."""
    if T <= 0 or TOKENS % T:
        raise ValueError(
            f"a batch of {TOKENS} tokens does not split into sequences of {T}; "
            f"use a length that divides it, e.g. one of {', '.join(map(str, LENGTHS))}"
        )
    return TOKENS // T


def time_sdpa(config, T):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, dim = SDPA_HEADS[config]
    B = batch_size(T)
    q, k, v = (torch.randn(B, heads, T, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn(B, heads, T, dim, device="cuda", dtype=torch.bfloat16)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return _time_three(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), do)


def fla_version() -> Optional[str]:
    try:
        import fla  # noqa: F401
    except ImportError:
        return None
    return getattr(fla, "__version__", "unknown")


FLA_GUARD_NOTE = "fla's Hopper/Triton<3.7.1 backward guard lifted for timing; its gradients are not trusted here"


@contextlib.contextmanager
def fla_backward_guard_lifted() -> Iterator[bool]:
    """Lift, for the block only, fla's refusal of its gated backward on Hopper with Triton in
    [3.4, 3.7.1) (fla 0.6: ``chunk_bwd_dqkwg`` in ``fla.ops.common.chunk_o`` raises RuntimeError,
    fla issue #640: those Triton versions miscompile it there). FOR TIMING ONLY: the kernels then
    run, their gradients are not trusted. Patches that module's ``TRITON_ABOVE_3_7_1`` flag (read
    only by that guard) and restores it on exit. Yields whether the guard was active here, i.e.
    whether lifting it changed anything.
    """
    import fla.ops.common.chunk_o as chunk_o

    for name in ("IS_NVIDIA_HOPPER", "TRITON_ABOVE_3_4_0", "TRITON_ABOVE_3_7_1"):
        if not hasattr(chunk_o, name):
            raise RuntimeError(
                f"fla.ops.common.chunk_o has no {name}: this fla version guards its backward "
                "differently; update fla_backward_guard_lifted in harness/bench/kernels.py"
            )
    saved = chunk_o.TRITON_ABOVE_3_7_1
    active = bool(chunk_o.IS_NVIDIA_HOPPER and chunk_o.TRITON_ABOVE_3_4_0 and not saved)
    chunk_o.TRITON_ABOVE_3_7_1 = True
    try:
        yield active
    finally:
        chunk_o.TRITON_ABOVE_3_7_1 = saved


def time_fla(B, T, H, K, V, report: Optional[Report] = None, qk_l2norm=True):
    """fla's ``chunk_gated_delta_rule`` (Gated DeltaNet = Q-Delta with lam = 0) on the same inputs.
    The backward runs with fla's Hopper/Triton guard lifted; ``report.fla_note`` says so where
    the guard was active."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    q, k, v, g, beta, _ = _inputs(B, T, H, K, V, requires_grad=True)
    do = torch.randn(B, T, H, V, device="cuda").bfloat16()
    with fla_backward_guard_lifted() as lifted:
        if lifted and report is not None:
            report.fla_note = FLA_GUARD_NOTE
        return _time_three(lambda: chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=qk_l2norm)[0], do)


def time_decode(config, variant, copy_gbps):
    from qdelta.kernels import OfficialState, fused_recurrent_qdelta
    from qdelta.kernels._inputs import prepare
    from qdelta.kernels.triton.fused_recurrent import build_launch

    H, K, V = HEAD_CONFIGS[config]
    N = DECODE_SEQUENCES
    q, k, v, g, beta, lam = _inputs(N, 1, H, K, V)
    state = torch.randn(N, H, K, V, device="cuda") * 0.1
    mats = 1
    if variant == "official":
        state = OfficialState(
            state, state.clone(), torch.zeros_like(state), torch.zeros(N, dtype=torch.int64, device="cuda")
        )
        mats = 3
    with torch.no_grad():
        us = 1e3 * _bench(
            lambda: fused_recurrent_qdelta(
                q, k, v, g, beta, lam, initial_state=state, inplace=True, variant=variant, use_qk_l2norm=True
            )
        )
        inp = prepare(
            q,
            k,
            v,
            g,
            beta,
            lam,
            scale=None,
            initial_state=state,
            use_qk_l2norm=True,
            cu_seqlens=None,
            variant=variant,
        )
        launch, _ = build_launch(inp, output_final_state=False, inplace=True)
        kernel_us = 1e3 * _bench(launch)
        fla_us = None
        if variant == "paper" and fla_version():
            from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

            s0 = state.clone()
            fla_us = 1e3 * _bench(
                lambda: fused_recurrent_gated_delta_rule(
                    q, k, v, g, beta, initial_state=s0, output_final_state=True, use_qk_l2norm_in_kernel=True
                )
            )
    nbytes = 2 * mats * N * H * K * V * 4  # each fp32 state matrix read once and written once
    gbps = nbytes / (kernel_us * 1e-6) / 1e9
    return DecodeRow(config, variant, N, us, kernel_us, nbytes, gbps, gbps / copy_gbps, fla_us)


def _guarded(report: Report, what: str, fn):
    """Run one timing; on failure record it in the report's notes and return (None, None, None)."""
    try:
        return fn()
    except Exception as err:  # a failed measurement must not lose the others
        log.exception("%s failed", what)
        report.notes.append(f"{what}: failed ({type(err).__name__}: {str(err)[:200]})")
        torch.cuda.empty_cache()
        return None, None, None


def card_family(name: str) -> Optional[str]:
    return "H200" if "H200" in name else ("H100" if "H100" in name else None)


NOT_RUN = "not run (left out by --configs / --lengths): "  # the note naming what a report lacks


def missing(shapes, decoded) -> List[str]:
    """The table's shapes ("340M T=8192") and decode rows ("1.3B decode") that are not among ``shapes``
    ((config, T) pairs) and ``decoded`` (configs)."""
    out = [f"{c} T={T}" for c in HEAD_CONFIGS for T in LENGTHS if (c, T) not in shapes]
    return out + [f"{c} decode" for c in HEAD_CONFIGS if c not in decoded]


def left_out(configs, lengths) -> List[str]:
    """What a run limited to these head configs and lengths does not measure (named in its notes)."""
    return missing({(c, T) for c in configs for T in lengths}, set(configs))


def resolved_launch_settings() -> Dict[str, Dict[str, Dict]]:
    """Every kernel's launch settings at both head configs, as this process would launch them."""
    from qdelta.kernels.triton import launch

    kernels = ("intra", "state", "output", "reverse", "intra_bwd", "kq_bwd", "recurrent")
    return {c: {k: launch.settings(k, K, V) for k in kernels} for c, (_, K, V) in HEAD_CONFIGS.items()}


UNFINISHED = "unfinished: the run stopped before measuring "  # the note of a run cut short


def _label(impl: str, norm: bool) -> str:
    return f"{impl}{' qk_l2norm' if norm else ''}"


def _note_pending(report: Report, pending) -> None:
    """Keep the report's note naming what the run has yet to measure (``pending``: (shape, row) pairs in
    run order; no note once it is empty), so that the files a cut run leaves say what they lack."""
    report.notes = [n for n in report.notes if not n.startswith(UNFINISHED)]
    if pending:
        shapes = {}
        for shape, row in pending:
            shapes.setdefault(shape, []).append(row)
        report.notes.append(UNFINISHED + "; ".join(f"{shape}: {', '.join(rows)}" for shape, rows in shapes.items()))


def _measurable(impl: str, report: Report, authors) -> bool:
    """Whether this run times ``impl`` (ours always; the authors' kernel when loaded, fla's when importable)."""
    if impl == "authors":
        return authors is not None
    return impl != "fla-gdn" or report.fla != "not installed"


def _time(impl, norm, report, authors, config, T):
    H, K, V = HEAD_CONFIGS[config]
    B = batch_size(T)
    if impl.startswith("qdelta-"):
        return time_ours(B, T, H, K, V, impl.split("-")[1], norm)
    if impl == "authors":
        return time_authors(authors, B, T, H, K, V, norm)
    if impl == "fla-gdn":
        return time_fla(B, T, H, K, V, report, norm)
    return time_sdpa(config, T)


def run_benchmark(lengths=LENGTHS, configs=tuple(HEAD_CONFIGS), on_progress=None, authors_dir=None) -> Report:
    """All timings on the current CUDA device; ``on_progress(report)`` after every shape (the CLI writes
    the files then, so a run cut short keeps what it measured). ``authors_dir``: the folder with the
    authors' ``qdelta_rule`` package (default: ``QDELTA_AUTHORS_DIR``)."""
    if not torch.cuda.is_available():
        raise ValueError("qdelta bench kernels needs a CUDA GPU (none is visible); run it on the GPU machine")
    import triton

    from qdelta.kernels.triton import launch

    name = torch.cuda.get_device_name()
    report = Report(
        card=name,
        torch=torch.__version__,
        triton=triton.__version__,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        fla=fla_version() or "not installed",
        copy_gbps=copy_bandwidth_gbps(),
        launch_overrides=json.dumps(launch.OVERRIDES) if launch.OVERRIDES else "",
        launch_settings=resolved_launch_settings(),
    )
    skipped = left_out(configs, lengths)
    if skipped:
        report.notes.append(NOT_RUN + ", ".join(skipped))
    try:
        authors = load_authors(authors_dir or os.environ.get(AUTHORS_ENV))
        report.authors = (
            f"chunk_qdelta_rule from {authors_dir or os.environ.get(AUTHORS_ENV)} (github.com/psmiz/Q-Delta)"
        )
    except Exception as err:  # noqa: BLE001 - any reason it cannot be loaded is stated, the rest still runs
        authors = None
        report.notes.append(f"authors' kernel not measured: {type(err).__name__}: {str(err)[:200]}")
    if report.fla == "not installed":
        report.notes.append("fla-gdn not measured: flash-linear-attention (fla-core) is not importable")
    progress = on_progress or (lambda r: None)
    peers = [(i, n) for n in (True, False) for i in IMPLS[:-1] if _measurable(i, report, authors)] + [("sdpa", False)]
    pending = [(f"{c} decode", v) for c in configs for v in ("paper", "official")]
    pending += [(f"{c} T={T}", _label(i, n)) for T in lengths for c in configs for i, n in peers]
    _note_pending(report, pending)
    for config in configs:
        for variant in ("paper", "official"):
            report.decode.append(time_decode(config, variant, report.copy_gbps))
            log.info("%s", report.decode[-1])
            pending.pop(0)
            _note_pending(report, pending)
            progress(report)
    for T in lengths:  # lengths outer: a run cut short still has both head configs of the first lengths
        for config in configs:
            log.info("chunk %s T=%d B=%d", config, T, batch_size(T))
            for impl, norm in peers:
                what = f"{impl} qk_l2norm={norm} {config} T={T}"
                fwd, fwdbwd, nograd = _guarded(report, what, lambda: _time(impl, norm, report, authors, config, T))
                report.rows.append(Row(config, T, impl, norm, fwd, fwdbwd, nograd, batch_size(T)))
                log.info("%s", report.rows[-1])
                torch.cuda.empty_cache()
                pending.pop(0)
                _note_pending(report, pending)
                progress(report)
    return report


def load_report(path: Path) -> Report:
    """A report from the JSON that :func:`write_report` wrote."""
    raw = json.loads(Path(path).read_text())
    report = Report(**{k: v for k, v in raw.items() if k not in ("rows", "decode")})
    report.rows = [Row(**r) for r in raw["rows"]]
    report.decode = [DecodeRow(**d) for d in raw["decode"]]
    return report


MERGE_MUST_MATCH = ("card", "torch", "triton", "fla", "launch_overrides", "launch_settings")


def merge_reports(reports: List[Report]) -> Report:
    """One report from runs that each measured part of the shapes (e.g. the lengths split over two device
    calls) with the same card, versions and launch settings. A report later in the list replaces an
    earlier one's row of the same shape (decode rows: same config and variant); the copy bandwidth shown
    is that of the last report with decode rows (each decode row's share of copy is its own run's); the
    notes name the runs and what none of them measured."""
    if not reports:
        raise ValueError("nothing to merge: give at least one report JSON")
    first = reports[0]
    for r in reports[1:]:
        for name in MERGE_MUST_MATCH:
            if getattr(r, name) != getattr(first, name):
                raise ValueError(
                    f"cannot merge runs with different {name}: {getattr(first, name)!r} vs "
                    f"{getattr(r, name)!r}; benchmark the missing shapes again under the same {name}"
                )
    rows, decode, copy_gbps = {}, {}, first.copy_gbps
    for r in reports:
        rows.update({(w.config, w.T, w.impl, w.qk_l2norm): w for w in r.rows})
        if r.decode:
            decode.update({(d.config, d.variant): d for d in r.decode})
            copy_gbps = r.copy_gbps
    order = list(HEAD_CONFIGS)
    by_shape = lambda w: (order.index(w.config), w.T, IMPLS.index(w.impl), not w.qk_l2norm)  # noqa: E731
    merged = Report(
        **{n: getattr(first, n) for n in MERGE_MUST_MATCH},
        date=reports[-1].date,
        copy_gbps=copy_gbps,
        fla_note=next((r.fla_note for r in reports if r.fla_note), None),
        authors=next((r.authors for r in reports if r.authors), ""),
    )
    merged.rows = sorted(rows.values(), key=by_shape)
    merged.decode = sorted(decode.values(), key=lambda d: (order.index(d.config), d.variant != "paper"))
    runs = [
        f"{r.date} ({', '.join(dict.fromkeys(f'{w.config} T={w.T}' for w in sorted(r.rows, key=by_shape)))})"
        for r in reports
    ]
    merged.notes = [f"merged from {len(reports)} runs on the same card and settings: " + "; ".join(runs)]
    kept = [n for r in reports for n in r.notes if not n.startswith((NOT_RUN, "merged from"))]
    merged.notes += list(dict.fromkeys(kept))  # each note once, in order
    lacking = missing({key[:2] for key in rows}, set(decode_config for decode_config, _ in decode))
    if lacking:
        merged.notes.append(NOT_RUN + ", ".join(lacking))
    return merged


def _fmt(x, digits=2):
    return "—" if x is None else f"{x:.{digits}f}"


def _find(r: Report, config, T, impl, norm) -> Optional[Row]:
    return next((w for w in r.rows if (w.config, w.T, w.impl, w.qk_l2norm) == (config, T, impl, norm)), None)


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return "—" if a is None or b is None else f"{a / b:.2f}x"


def to_markdown(r: Report) -> str:
    """The report as markdown: every row, then the ratios against the authors and the cost of the norm."""
    lines = [
        f"# Kernel benchmark ({r.card})",
        "",
        f"torch {r.torch}, Triton {r.triton}, flash-linear-attention: {r.fla}, {r.date}. "
        f"bf16, {TOKENS} tokens a batch, median ms of triton.testing.do_bench, every column measured in this "
        "run on identical inputs. qdelta-* = our Triton forward and backward (kernels/triton/NOTES.md); "
        f"authors = {r.authors or 'not measured (see the notes)'}; fla-gdn = fla's chunk_gated_delta_rule "
        "(lam = 0); sdpa = PyTorch flash attention, 16 heads of the model width. qk_l2norm: the q/k l2-norm "
        "inside the call. fwd = forward with grad enabled (training), no_grad = forward under torch.no_grad "
        "(prefill)." + (f" Launch settings overridden: {r.launch_overrides}." if r.launch_overrides else ""),
        "",
        "| heads | T | B | impl | qk_l2norm | fwd | fwd no_grad | fwd+bwd |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in r.rows:
        lines.append(
            f"| {w.config} | {w.T} | {w.batch} | {w.impl} | {'yes' if w.qk_l2norm else 'no'} | "
            f"{_fmt(w.fwd_ms)} | {_fmt(w.fwd_nograd_ms)} | {_fmt(w.fwd_bwd_ms)} |"
        )
    if r.fla_note:
        lines += ["", r.fla_note + "."]
    lines += [
        "",
        "Ratios (qdelta-paper with the norm in the call, as the models run it; < 1 is faster): "
        "against the authors with their in-kernel norm, fwd / no_grad fwd / fwd+bwd; the official variant "
        "over the paper one (fwd+bwd); the norm's cost (with / without, fwd+bwd).",
        "",
        "| heads | T | vs authors fwd | vs authors no_grad | vs authors fwd+bwd | vs SDPA fwd+bwd "
        "| official / paper | norm on / off |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for config, T in dict.fromkeys((w.config, w.T) for w in r.rows):
        ours = _find(r, config, T, "qdelta-paper", True)
        off = _find(r, config, T, "qdelta-paper", False)
        official = _find(r, config, T, "qdelta-official", True)
        auth = _find(r, config, T, "authors", True)
        sdpa = _find(r, config, T, "sdpa", False)
        if ours is None:
            continue
        get = lambda w, f: None if w is None else getattr(w, f)  # noqa: E731
        lines.append(
            f"| {config} | {T} | {_ratio(ours.fwd_ms, get(auth, 'fwd_ms'))} | "
            f"{_ratio(ours.fwd_nograd_ms, get(auth, 'fwd_nograd_ms'))} | "
            f"{_ratio(ours.fwd_bwd_ms, get(auth, 'fwd_bwd_ms'))} | {_ratio(ours.fwd_bwd_ms, get(sdpa, 'fwd_bwd_ms'))} | "
            f"{_ratio(get(official, 'fwd_bwd_ms'), ours.fwd_bwd_ms)} | {_ratio(ours.fwd_bwd_ms, get(off, 'fwd_bwd_ms'))} |"
        )
    lines += [
        "",
        f"Decode step (one token, {DECODE_SEQUENCES} sequences, fp32 state updated in place, use_qk_l2norm=True): "
        "call = the public fused_recurrent_qdelta as the model calls it, host work included; kernel = the "
        "kernel launch alone; fla call = fla's fused_recurrent_gated_delta_rule on the same inputs. "
        f"Measured device-to-device copy: {r.copy_gbps:.0f} GB/s (read + write); GB/s and share of copy use "
        "the kernel time.",
        "",
        "| heads | variant | call us | kernel us | fla call us | state bytes | GB/s | of copy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in r.decode:
        lines.append(
            f"| {d.config} | {d.variant} | {d.step_us:.1f} | {d.kernel_us:.1f} | {_fmt(d.fla_call_us, 1)} | "
            f"{d.state_bytes} | {d.gbps:.0f} | {100 * d.fraction_of_copy:.0f}% |"
        )
    lines += [""] + [f"- {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    from qdelta.harness.eval.records import atomic_write_text

    atomic_write_text(path, text)


def write_report(r: Report, out_dir: Path) -> Dict[str, Path]:
    """results/bench/kernels-<card>.json and .md (one pair per card family; a rerun replaces it)."""
    tag = (card_family(r.card) or r.card.replace(" ", "_")).lower()
    paths = {"json": out_dir / f"kernels-{tag}.json", "md": out_dir / f"kernels-{tag}.md"}
    _atomic_write(paths["json"], json.dumps(asdict(r), indent=2) + "\n")
    _atomic_write(paths["md"], to_markdown(r))
    return paths


SUMMARY_BEGIN, SUMMARY_END = (
    "<!-- kernel numbers: generated by qdelta.harness.bench.kernels summary -->",
    "<!-- end -->",
)


def summary(r: Report) -> str:
    """The kernel numbers the README and NOTES.md quote, made from one report (paper variant, the norm
    in the call, as the models run it; every peer from the same run): regenerate them with
    ``python -m qdelta.harness.bench.kernels summary results/bench/kernels-h200.json``."""

    def ms(config, T, impl, norm, f="fwd_bwd_ms"):
        w = _find(r, config, T, impl, norm)
        return None if w is None else getattr(w, f)

    parts = []
    for config in HEAD_CONFIGS:
        for T in (2048, 16384):
            ours, auth = ms(config, T, "qdelta-paper", True), ms(config, T, "authors", True)
            if ours is None:
                continue
            parts.append(
                f"{config} heads, T = {T}: fwd {_fmt(ms(config, T, 'qdelta-paper', True, 'fwd_ms'))} / "
                f"fwd+bwd {_fmt(ours)} ms; authors {_fmt(ms(config, T, 'authors', True, 'fwd_ms'))} / "
                f"{_fmt(auth)} ({_ratio(ours, auth)}); fla Gated DeltaNet {_fmt(ms(config, T, 'fla-gdn', True))} "
                f"({_ratio(ours, ms(config, T, 'fla-gdn', True))}); SDPA flash {_fmt(ms(config, T, 'sdpa', False))}; "
                f"pre-normalised q, k {_fmt(ms(config, T, 'qdelta-paper', False))} "
                f"(norm {_ratio(ours, ms(config, T, 'qdelta-paper', False))}); official variant "
                f"{_fmt(ms(config, T, 'qdelta-official', True))}"
            )
    dec = [
        f"{d.config} {d.variant} {d.step_us:.0f} / {d.kernel_us:.0f} us"
        + (f" (fla {d.fla_call_us:.0f} us)" if d.fla_call_us else "")
        for d in r.decode
    ]
    return (
        f"{r.card}, torch {r.torch}, Triton {r.triton}, fla {r.fla}, {r.date[:10]}, bf16, {TOKENS} tokens a batch, "
        "use_qk_l2norm=True (ratios: ours over the peer). "
        + ". ".join(parts)
        + ". Decode, 64 sequences, call / kernel: "
        + ", ".join(dec)
        + "."
    )


def _main(argv: List[str]) -> int:
    if len(argv) != 2 or argv[0] != "summary":
        print("usage: python -m qdelta.harness.bench.kernels summary KERNELS_JSON", file=sys.stderr)
        return 2
    print(SUMMARY_BEGIN + "\n" + summary(load_report(Path(argv[1]))) + "\n" + SUMMARY_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
