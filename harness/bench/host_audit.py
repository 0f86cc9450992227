"""Host work of our models' GPU path, counted on a CPU: aten ops per call and per layer, and every value read.

A training step of the 340M-shaped model (bf16, B = 8, T = 2048) takes far more wall time on an H200 than
its profiled GPU time (DESIGN §3.7), so the host either waits for the GPU or issues too many ops. This
module runs the CUDA path without a GPU (:mod:`.fake_cuda`: fake tensors on a fake CUDA device, Triton
launches recorded and skipped) and counts with :class:`.op_audit.OpAudit` what each call issues:

- ``train``: ``model(ids, labels=ids)``, ``loss.backward()``, fused AdamW ``step()`` and ``zero_grad``;
- ``prefill``: ``model(ids, use_cache=True)`` under ``no_grad``;
- ``decode``: one token per row with the prefill's cache (updated in place);
- ``extend``: T more tokens on top of that cache (a prompt continued, as lm-eval's prefix reuse does);
- ``padded``: ``prefill`` with the first row's first quarter masked as padding (the packed path).

Each call runs once to warm up (optimizer state, chunk tables) and is counted on its second run. Ops are
charged to the block (layer) that issued them, in the backward through the autograd node's forward
(:func:`.op_audit.inherit_tags`); the rest is "outside" (embedding, final norm, head, loss, optimizer).
``glue``: ``"eager"`` runs the PyTorch modules around the op, ``"fused"`` fla-core's (``qdelta.fused``;
needs fla-core importable, e.g. ``PYTHONPATH`` with a ``pip install --target`` folder).

    python -m qdelta.harness.bench.host_audit                    # every model and call, 2 layers
    python -m qdelta.harness.bench.host_audit --glue fused --models qdelta-paper --calls train
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .op_audit import Op, OpAudit, Sources, counts, inherit_tags

MODELS = {
    "qdelta-paper": ("qdelta", "paper"),
    "qdelta-official": ("qdelta", "official"),
    "gdn": ("gated_deltanet", None),
}
CALLS = ("train", "prefill", "decode", "extend", "padded")
GLUES = ("eager", "fused")
COLUMNS = ("ops", "alloc", "read", "h2d", "cast", "copy", "cpu")
OWN_FILES = ("harness/bench/host_audit.py", "harness/bench/op_audit.py", "harness/bench/fake_cuda.py")


@dataclass
class CallAudit:
    model: str  # a name of MODELS
    call: str  # a name of CALLS
    layers: int
    ops: List[Op]
    launches: List[str]  # Triton kernels, in order
    glue: str = "eager"
    error: Optional[str] = None  # why the call stopped (its ops are counted up to there)

    def layer_ops(self, layer: Optional[int]) -> List[Op]:
        return [op for op in self.ops if op.layer == layer]

    def per_layer(self) -> List[Dict[str, int]]:
        return [counts(self.layer_ops(i)) for i in range(self.layers)]

    def outside(self) -> Dict[str, int]:
        return counts(self.layer_ops(None))


@dataclass
class Setup:
    """What the calls run on: batch B, tokens T, model dtype, glue."""

    batch: int = 8
    tokens: int = 2048
    dtype: torch.dtype = torch.bfloat16
    glue: str = "eager"


def _config(model_type: str, variant: Optional[str], layers: int):
    from qdelta.configuration import CONFIG_CLASSES

    from .model import AUTHORS_340M, GDN_340M

    if model_type == "qdelta":
        return CONFIG_CLASSES[model_type](**{**AUTHORS_340M, "num_hidden_layers": layers}, variant=variant)
    return CONFIG_CLASSES[model_type](**{**GDN_340M, "num_hidden_layers": layers})


def fake_model(name: str, layers: int, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """Model ``name`` of :data:`MODELS` at the 340M layer shape with ``layers`` blocks, its parameters fake
    CUDA tensors of ``dtype`` (call inside :func:`audit_context`)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from qdelta.modeling import MODEL_CLASSES

    model_type, variant = MODELS[name]
    with unset_fake_temporarily(), torch.device("meta"):
        model = MODEL_CLASSES[model_type][1](_config(model_type, variant, layers))
    device = torch.device("cuda", 0)
    for module in model.modules():
        for key, t in list(module._parameters.items()) + list(module._buffers.items()):
            if t is None:
                continue
            fake = torch.empty(t.shape, dtype=dtype if t.is_floating_point() else t.dtype, device=device)
            if key in module._parameters:
                module._parameters[key] = torch.nn.Parameter(fake, requires_grad=t.requires_grad)
            else:
                module._buffers[key] = fake
    return model


@contextlib.contextmanager
def audit_context(glue: str = "eager") -> Iterator[List[str]]:
    """:func:`.fake_cuda.fake_cuda` with the glue chosen; yields the Triton launch list. The chunk tables
    cached in the block (fake tensors) are dropped after it."""
    from qdelta import fused
    from qdelta.kernels.triton import chunk as triton_chunk

    from .fake_cuda import fake_cuda

    if glue not in GLUES:
        raise ValueError(f"glue must be one of {GLUES}, got {glue!r}")
    with contextlib.ExitStack() as stack:
        launches = stack.enter_context(fake_cuda())
        stack.callback(triton_chunk._cached_table.cache_clear)
        if glue == "eager":
            stack.enter_context(fused.eager())
        elif not fused.available():  # first called here: fla imports on the fake device
            raise RuntimeError(f"glue='fused' needs fla-core importable; install: {fused.INSTALL}")
        yield launches


def _sources() -> Sources:
    import qdelta
    import qdelta.harness
    import qdelta.kernels

    roots = {"kernels": qdelta.kernels.__path__[0], "harness": qdelta.harness.__path__[0]}
    roots["qdelta"] = os.path.dirname(qdelta.__file__)
    with contextlib.suppress(ImportError):
        import fla

        roots["fla"] = fla.__path__[0]
    torch_dir = os.path.dirname(torch.__file__)
    fallback = {f"torch/{part}": os.path.join(torch_dir, part) for part in ("optim", "autograd", "nn")}
    with contextlib.suppress(ImportError):
        import transformers

        fallback["transformers"] = os.path.dirname(transformers.__file__)
    return Sources(roots, fallback, skip=OWN_FILES)


@contextlib.contextmanager
def _layer_tags(model, audit: OpAudit) -> Iterator[None]:
    """``audit.layer`` = i while block i runs its forward."""

    def enter(i):
        return lambda module, args: setattr(audit, "layer", i)

    handles = []
    for i, block in enumerate(model.model.layers):
        handles.append(block.register_forward_pre_hook(enter(i)))
        handles.append(block.register_forward_hook(lambda module, args, out: setattr(audit, "layer", None)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _call(model, call: str, setup: Setup):
    """A function running ``call`` once, given the audit to set phases on."""
    if call not in CALLS:
        raise ValueError(f"call must be one of {CALLS}, got {call!r}")
    device = torch.device("cuda", 0)
    ids = torch.randint(0, model.config.vocab_size, (setup.batch, setup.tokens), device=device)
    if call == "train":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

        def train(audit):
            audit.phase = "forward"
            loss = model(input_ids=ids, labels=ids).loss
            inherit_tags(loss.grad_fn)
            audit.phase = "backward"
            loss.backward()
            audit.phase = "optimizer"
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return train
    model.eval()
    cache = []
    mask = torch.ones_like(ids)
    mask[0, : setup.tokens // 4] = 0

    def run(audit):
        audit.phase = call
        with torch.no_grad():
            if call in ("prefill", "padded"):
                model(input_ids=ids, attention_mask=mask if call == "padded" else None, use_cache=True)
                return
            if not cache:
                cache.append(model(input_ids=ids, use_cache=True).past_key_values)
            step = ids[:, :1] if call == "decode" else ids
            model(input_ids=step, past_key_values=cache[0], use_cache=True)

    return run


def audit_call(name: str, call: str, layers: int, setup: Optional[Setup] = None) -> CallAudit:
    """One call of model ``name`` at ``layers`` blocks, counted (see the module docstring)."""
    setup = setup or Setup()
    with audit_context(setup.glue) as launches:
        model = fake_model(name, layers, setup.dtype)
        run = _call(model, call, setup)
        sources, error = _sources(), None
        for _ in range(2):  # a warm-up (optimizer state, chunk tables, the cache of decode / extend), then counted
            del launches[:]
            audit = OpAudit(sources)
            try:
                with _layer_tags(model, audit), audit:
                    run(audit)
            except Exception as err:  # noqa: BLE001 - e.g. a shape that depends on values: counted up to there
                error = f"{type(err).__name__}: {str(err)[:200]} (after {audit.ops[-1].source if audit.ops else '-'})"
                break
        return CallAudit(name, call, layers, audit.ops, list(launches), setup.glue, error)


def audit_calls(runs: Sequence[Tuple[str, str, int]], setup: Optional[Setup] = None) -> List[CallAudit]:
    """:func:`audit_call` of each ``(name, call, layers)`` in ``runs``, in a fresh interpreter: the autograd
    engine sizes its per-device queues once, at the first backward of a process, so a process that ran any
    backward before the fake device existed cannot run a backward on it (a test suite, a notebook)."""
    setup = setup or Setup()
    job = {"runs": [list(r) for r in runs], "setup": {**asdict(setup), "dtype": str(setup.dtype).split(".")[-1]}}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "audits.json")
        code = f"from {__name__} import _audit_job; _audit_job({json.dumps(job)!r}, {path!r})"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the host audit's process failed:\n{done.stderr[-2000:]}")
        with open(path) as f:
            rows = json.load(f)
    return [CallAudit(**{**row, "ops": [Op(**op) for op in row["ops"]]}) for row in rows]


def _audit_job(job: str, path: str) -> None:
    """The process of :func:`audit_calls`: the audits of ``job`` (JSON) written to ``path``."""
    spec = json.loads(job)
    setup = Setup(**{**spec["setup"], "dtype": getattr(torch, spec["setup"]["dtype"])})
    audits = [audit_call(name, call, layers, setup) for name, call, layers in spec["runs"]]
    with open(path, "w") as f:
        json.dump([asdict(a) for a in audits], f)


def top(ops: Sequence[Op], key: str, n: int = 10) -> List[tuple]:
    """The ``n`` most frequent values of ``key`` (``name``, ``source``, ...) among ``ops``."""
    return Counter(getattr(op, key) for op in ops).most_common(n)


def function_of(source: str) -> str:
    """``root/file.py:qualname:line`` -> ``root/file.py:qualname``; ``backward of root/file.py:qualname:line
    (Node)`` -> ``backward of root/file.py:qualname`` (every node the function made, together)."""
    prefix = "backward of "
    if source.startswith(prefix):
        return prefix + function_of(source[len(prefix) :].rsplit(" (", 1)[0])
    return source.rsplit(":", 1)[0]


def table(audits: Sequence[CallAudit], depth: int = 24) -> List[str]:
    """Markdown: per model and call, the counts of one layer (layer 0; '!' when the layers differ), of the
    ops outside the layers, the ops of the call at ``depth`` layers (outside + depth x one layer) and the
    Triton launches."""
    head = "| model | call | glue | layers | " + " | ".join(f"{c} /layer" for c in COLUMNS) + " | outside ops "
    lines = [head + f"| outside reads | ops at {depth} layers | Triton launches |", "|---" * (len(COLUMNS) + 8) + "|"]
    stopped = []
    for a in audits:
        layers = a.per_layer()
        same = all(x == layers[0] for x in layers)
        mark = "" if same else " !"
        per = " | ".join(f"{layers[0][c]}{mark}" for c in COLUMNS) if layers else " | ".join("-" for _ in COLUMNS)
        outside = a.outside()
        at_depth = outside["ops"] + depth * layers[0]["ops"] if layers else outside["ops"]
        lines.append(
            f"| {a.model} | {a.call} | {a.glue} | {a.layers} | {per} | {outside['ops']} | {outside['read']} "
            f"| {at_depth} | {len(a.launches)} |"
        )
        if a.error:
            lines[-1] = lines[-1].replace(f"| {a.call} |", f"| {a.call} (stopped) |", 1)
            stopped.append(f"- {a.model} {a.call}: stopped by {a.error}")
    return lines + ([""] + stopped if stopped else [])


def reads(audits: Sequence[CallAudit]) -> List[str]:
    """Every value read and host-to-device copy, with its source, counted per audit."""
    lines = []
    for a in audits:
        found = Counter((op.kind, op.name, op.source, op.detail) for op in a.ops if op.kind in ("read", "h2d"))
        for (kind, name, source, detail), n in sorted(found.items()):
            lines.append(f"- {a.model} {a.call} ({a.layers} layers): {n} x {kind} `{name}` {detail} at {source}")
    return lines


def breakdown(a: CallAudit, n: int = 10) -> List[str]:
    """Layer 0's top aten ops and issuing functions, and its casts and copies."""
    ops = a.layer_ops(0)
    lines = [f"### {a.model} {a.call}: one layer, {len(ops)} ops", "", "top ops: "]
    lines[-1] += ", ".join(f"{name} {k}" for name, k in top(ops, "name", n))
    by_function = Counter(function_of(op.source) for op in ops).most_common(n)
    lines += ["", "top functions:"] + [f"- {k} {fn}" for fn, k in by_function]
    moves = Counter((op.kind, op.name, op.detail, op.phase) for op in ops if op.kind in ("cast", "copy"))
    lines += ["", "casts and copies:"] + [f"- {k} x {kd} {nm} {d} ({ph})" for (kd, nm, d, ph), k in moves.items()]
    return lines + [""]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--calls", default=",".join(CALLS), help=f"comma-separated, of {', '.join(CALLS)}")
    parser.add_argument("--layers", default="2", help="comma-separated block counts, e.g. 2,4")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--glue", choices=GLUES, default="eager")
    parser.add_argument("--top", type=int, default=10, help="top ops and functions per layer (0: none)")
    args = parser.parse_args(argv)
    for given, known in ((args.models, MODELS), (args.calls, CALLS)):
        unknown = sorted(set(given.split(",")) - set(known))
        if unknown:
            parser.error(f"unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    setup = Setup(args.batch, args.tokens, glue=args.glue)
    audits = [
        audit_call(name, call, int(layers), setup)
        for name in args.models.split(",")
        for call in args.calls.split(",")
        for layers in args.layers.split(",")
    ]
    print("\n".join(table(audits)))
    print("\nValue reads and host-to-device copies:\n")
    print("\n".join(reads(audits)) or "none")
    if args.top:
        print()
        for a in audits:
            if a.layers == int(args.layers.split(",")[0]):
                print("\n".join(breakdown(a, args.top)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
