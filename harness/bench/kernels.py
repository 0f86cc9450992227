"""Kernel benchmark behind ``qdelta bench kernels`` (issue 3): timings, bandwidth, result files.

Times (median of ``triton.testing.do_bench``, bf16, 32,768 tokens a batch) our Triton
``chunk_qdelta`` forward and forward+backward, PyTorch SDPA flash attention at the same width
(16 heads of 64 / 128), flash-linear-attention's ``chunk_gated_delta_rule`` when importable,
and the recurrent decode step at 64 sequences with its effective state bandwidth next to a
measured device-to-device copy bandwidth. Results go to ``results/bench/`` as JSON + markdown.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
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

# DESIGN §5 anchors: the authors' chunk kernel (fwd, fwd+bwd ms), H200 and H100, torch 2.11, Triton 3.6.
AUTHORS = {
    "H200": {
        ("340M", 2048): (0.76, 3.23),
        ("340M", 4096): (0.85, 3.41),
        ("340M", 8192): (1.06, 4.03),
        ("340M", 16384): (1.56, 5.53),
        ("1.3B", 2048): (1.89, 10.98),
        ("1.3B", 4096): (1.90, 10.99),
        ("1.3B", 8192): (2.13, 11.47),
        ("1.3B", 16384): (2.17, 12.76),
    },
    "H100": {
        ("340M", 2048): (1.11, 3.86),
        ("340M", 16384): (1.64, 6.05),
        ("1.3B", 2048): (2.07, 11.92),
        ("1.3B", 16384): (2.36, 13.70),
    },
}


@dataclass
class Row:
    config: str
    T: int
    batch: int
    ours_fwd_ms: float
    ours_fwdbwd_ms: float
    sdpa_fwd_ms: Optional[float]
    sdpa_fwdbwd_ms: Optional[float]
    fla_fwd_ms: Optional[float] = None
    fla_fwdbwd_ms: Optional[float] = None
    authors_fwd_ms: Optional[float] = None
    authors_fwdbwd_ms: Optional[float] = None


@dataclass
class DecodeRow:
    config: str
    variant: str
    sequences: int
    step_us: float  # the public call, host work included
    kernel_us: float  # the kernel launch alone
    state_bytes: int
    gbps: float
    fraction_of_copy: float


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
    launch_overrides: str = ""  # QDELTA_TRITON_LAUNCH of the run (kernels/triton/launch.py), "" for the defaults
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


def time_ours(B, T, H, K, V, variant="paper"):
    from qdelta.kernels import chunk_qdelta

    q, k, v, g, beta, lam = _inputs(B, T, H, K, V, requires_grad=True)
    do = torch.randn(B, T, H, V, device="cuda").bfloat16()
    with torch.no_grad():
        fwd = _bench(lambda: chunk_qdelta(q, k, v, g, beta, lam, variant=variant))

    def fwdbwd():
        o, _ = chunk_qdelta(q, k, v, g, beta, lam, variant=variant)
        o.backward(do)

    return fwd, _bench(fwdbwd)


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
        with torch.no_grad():
            fwd = _bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        fwdbwd = _bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(do))
    return fwd, fwdbwd


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


def time_fla(B, T, H, K, V, report: Optional[Report] = None):
    """fla's ``chunk_gated_delta_rule`` (Gated DeltaNet = Q-Delta with lam = 0), fwd and fwd+bwd ms.
    The backward runs with fla's Hopper/Triton guard lifted; ``report.fla_note`` says so where
    the guard was active."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    q, k, v, g, beta, _ = _inputs(B, T, H, K, V, requires_grad=True)
    do = torch.randn(B, T, H, V, device="cuda").bfloat16()
    with torch.no_grad():
        fwd = _bench(lambda: chunk_gated_delta_rule(q, k, v, g, beta))
    with fla_backward_guard_lifted() as lifted:
        if lifted and report is not None:
            report.fla_note = FLA_GUARD_NOTE
        fwdbwd = _bench(lambda: chunk_gated_delta_rule(q, k, v, g, beta)[0].backward(do))
    return fwd, fwdbwd


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
            lambda: fused_recurrent_qdelta(q, k, v, g, beta, lam, initial_state=state, inplace=True, variant=variant)
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
            use_qk_l2norm=False,
            cu_seqlens=None,
            variant=variant,
        )
        launch, _ = build_launch(inp, output_final_state=False, inplace=True)
        kernel_us = 1e3 * _bench(launch)
    nbytes = 2 * mats * N * H * K * V * 4  # each fp32 state matrix read once and written once
    gbps = nbytes / (kernel_us * 1e-6) / 1e9
    return DecodeRow(config, variant, N, us, kernel_us, nbytes, gbps, gbps / copy_gbps)


def _guarded(report: Report, what: str, fn):
    """Run one timing; on failure record it in the report's notes and return (None, None)."""
    try:
        return fn()
    except Exception as err:  # a failed measurement must not lose the others
        log.exception("%s failed", what)
        report.notes.append(f"{what}: failed ({type(err).__name__}: {str(err)[:200]})")
        torch.cuda.empty_cache()
        return None, None


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


def run_benchmark(lengths=LENGTHS, configs=tuple(HEAD_CONFIGS), on_progress=None) -> Report:
    """All timings of issue 3 on the current CUDA device; ``on_progress(report)`` after every row
    (the CLI writes the files then, so a run cut short keeps what it measured)."""
    if not torch.cuda.is_available():
        raise ValueError("qdelta bench kernels needs a CUDA GPU (none is visible); run it on the GPU machine")
    import triton

    name = torch.cuda.get_device_name()
    report = Report(
        card=name,
        torch=torch.__version__,
        triton=triton.__version__,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        fla=fla_version() or "not installed",
        copy_gbps=copy_bandwidth_gbps(),
        launch_overrides=os.environ.get("QDELTA_TRITON_LAUNCH", ""),
        launch_settings=resolved_launch_settings(),
    )
    skipped = left_out(configs, lengths)
    if skipped:
        report.notes.append(NOT_RUN + ", ".join(skipped))
    progress = on_progress or (lambda r: None)
    anchors = AUTHORS.get(card_family(name), {})
    for config in configs:
        H, K, V = HEAD_CONFIGS[config]
        for T in lengths:
            B = batch_size(T)
            log.info("chunk %s T=%d B=%d", config, T, B)
            ours = _guarded(report, f"ours {config} T={T}", lambda: time_ours(B, T, H, K, V))
            sdpa = _guarded(report, f"SDPA {config} T={T}", lambda: time_sdpa(config, T))
            row = Row(config, T, B, *ours, *sdpa)
            if report.fla != "not installed":
                row.fla_fwd_ms, row.fla_fwdbwd_ms = _guarded(
                    report, f"fla {config} T={T}", lambda: time_fla(B, T, H, K, V, report)
                )
            log.info("%s", row)
            row.authors_fwd_ms, row.authors_fwdbwd_ms = anchors.get((config, T), (None, None))
            report.rows.append(row)
            progress(report)
            torch.cuda.empty_cache()
        for variant in ("paper", "official"):
            report.decode.append(time_decode(config, variant, report.copy_gbps))
            log.info("%s", report.decode[-1])
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
        rows.update({(w.config, w.T): w for w in r.rows})
        if r.decode:
            decode.update({(d.config, d.variant): d for d in r.decode})
            copy_gbps = r.copy_gbps
    order = list(HEAD_CONFIGS)
    by_shape = lambda w: (order.index(w.config), w.T)  # noqa: E731  (table order)
    merged = Report(
        **{n: getattr(first, n) for n in MERGE_MUST_MATCH},
        date=reports[-1].date,
        copy_gbps=copy_gbps,
        fla_note=next((r.fla_note for r in reports if r.fla_note), None),
    )
    merged.rows = sorted(rows.values(), key=by_shape)
    merged.decode = sorted(decode.values(), key=lambda d: (order.index(d.config), d.variant != "paper"))
    runs = [f"{r.date} ({', '.join(f'{w.config} T={w.T}' for w in sorted(r.rows, key=by_shape))})" for r in reports]
    merged.notes = [f"merged from {len(reports)} runs on the same card and settings: " + "; ".join(runs)]
    kept = [n for r in reports for n in r.notes if not n.startswith((NOT_RUN, "merged from"))]
    merged.notes += list(dict.fromkeys(kept))  # each note once, in order
    lacking = missing(set(rows), set(decode_config for decode_config, _ in decode))
    if lacking:
        merged.notes.append(NOT_RUN + ", ".join(lacking))
    return merged


def _fmt(x, digits=2):
    return "—" if x is None else f"{x:.{digits}f}"


def to_markdown(r: Report) -> str:
    lines = [
        f"# Kernel benchmark ({r.card})",
        "",
        f"torch {r.torch}, Triton {r.triton}, flash-linear-attention: {r.fla}, {r.date}. "
        f"bf16, {TOKENS} tokens a batch, median ms of triton.testing.do_bench. "
        "Ours = Triton forward and Triton backward (kernels/triton/NOTES.md; launch settings in launch.py). "
        "Authors' columns are DESIGN §5 anchors measured on the same card family (— where none)."
        + (f" Launch settings overridden: QDELTA_TRITON_LAUNCH={r.launch_overrides}." if r.launch_overrides else ""),
        "",
        "| heads | T | B | ours fwd | ours fwd+bwd | SDPA flash fwd | SDPA fwd+bwd | fla GDN fwd | fla fwd+bwd "
        "| authors fwd | authors fwd+bwd |",
        "|" + "---|" * 11,
    ]
    for w in r.rows:
        lines.append(
            f"| {w.config} | {w.T} | {w.batch} | {_fmt(w.ours_fwd_ms)} | {_fmt(w.ours_fwdbwd_ms)} | "
            f"{_fmt(w.sdpa_fwd_ms)} | {_fmt(w.sdpa_fwdbwd_ms)} | "
            f"{_fmt(w.fla_fwd_ms) if r.fla != 'not installed' else 'not installed'} | "
            f"{_fmt(w.fla_fwdbwd_ms) if r.fla != 'not installed' else 'not installed'} | "
            f"{_fmt(w.authors_fwd_ms)} | {_fmt(w.authors_fwdbwd_ms)} |"
        )
    if r.fla_note:
        lines += ["", r.fla_note + "."]
    lines += [
        "",
        f"Decode step (one token, {DECODE_SEQUENCES} sequences, state updated in place); "
        f"measured device-to-device copy: {r.copy_gbps:.0f} GB/s (read + write).",
        "",
        "GB/s and share of copy use the kernel time.",
        "",
        "| heads | variant | call us | kernel us | state bytes | GB/s | of copy |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in r.decode:
        lines.append(
            f"| {d.config} | {d.variant} | {d.step_us:.1f} | {d.kernel_us:.1f} | {d.state_bytes} | "
            f"{d.gbps:.0f} | {100 * d.fraction_of_copy:.0f}% |"
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
