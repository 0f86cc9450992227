"""Every aten op a block issues, classified, with the Python function that issued it.

:class:`OpAudit` is a dispatch mode (it sees the ops below autograd: what reaches the backend, one kernel
or host-side call each). Per op it records the name, whether it allocates a tensor, and its kind:

- ``read``: reads a CUDA tensor's values on the host (``_local_scalar_dense`` behind ``.item()`` and
  ``bool(t)``, ``is_nonzero``, ``equal``, ``nonzero``, ``masked_select``, ``unique``, ``repeat_interleave``
  without ``output_size``, a copy to the CPU behind ``.cpu()``): the host waits for the GPU. A ``.tolist()``
  shows here as one ``_local_scalar_dense`` per element (on a GPU: one copy, one wait);
- ``h2d``: a copy from the CPU to the GPU (from pageable memory: the host waits for the copy);
- ``cast``: a ``_to_copy`` / ``copy_`` that changes the dtype; ``copy``: ``clone`` (and ``contiguous`` that
  copies), ``copy_``, ``_to_copy`` to the same dtype;
- ``cpu``: an op whose tensors are all on the CPU (host work, no GPU kernel).

Under fake tensors a value read has no value: the op is recorded and 1 / True (an empty ``nonzero``) is
used, so the code after it may take another branch than the GPU would; an op whose output shape depends on
values it cannot know raises. The source of an op is the innermost frame in one of ``roots``
(``name -> folder``); an op of a backward without such a frame is charged to the forward function that made
its autograd node (``backward of ...``; :class:`OpAudit` records those while the forward runs, through a
function mode).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

READS = {"_local_scalar_dense", "is_nonzero", "equal", "allclose", "nonzero", "masked_select"}
READS |= {"unique", "_unique", "_unique2", "unique_dim", "unique_consecutive", "bincount"}
SKIPPED = {"prim"}  # prim.device etc.: metadata queries a real tensor answers without the dispatcher
SOURCE_KEY, LAYER_KEY = "host_audit_source", "host_audit_layer"  # autograd node metadata, set in the forward
HOST_DATA = (torch.tensor, torch.as_tensor)  # tensors from Python data
SYNC_REPEATS = ("Tensor", "self_Tensor")  # repeat_interleave overloads with a repeats tensor


@dataclass
class Op:
    name: str  # "mm", "_to_copy", or "namespace.name" outside aten
    phase: str
    layer: Optional[int]  # the block that issued it (None: outside the blocks)
    source: str  # "qdelta/layers.py:RecurrentMixer.forward:123"
    allocates: bool
    kind: Optional[str]  # read, h2d, cast, copy, cpu or None
    detail: str = ""  # shapes and dtypes of casts, copies and reads


def _name(func) -> str:
    packet = func.overloadpacket
    namespace = func.namespace
    return packet.__name__ if namespace == "aten" else f"{namespace}.{packet.__name__}"


def _allocates(func) -> bool:
    return any(r.alias_info is None and str(r.type) in ("Tensor", "Tensor[]", "Tensor?") for r in func._schema.returns)


def _tensors(args, kwargs) -> List[torch.Tensor]:
    return [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]


def _describe(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} {t.device.type}"


def classify(func, args, kwargs, tensors: Sequence[torch.Tensor]) -> Tuple[Optional[str], str]:
    """(kind, detail) of one op (see the module docstring)."""
    name = _name(func)
    on_cuda = any(t.is_cuda for t in tensors)
    unsized = name == "repeat_interleave" and func._overloadname in SYNC_REPEATS and kwargs.get("output_size") is None
    if name in READS or unsized:
        return ("read", _describe(tensors[0])) if on_cuda else ("cpu", "")
    if name in ("_to_copy", "copy_"):
        src, dst_dtype, dst_device = (args[0], kwargs.get("dtype"), kwargs.get("device"))
        if name == "copy_":
            dst, src = args[0], args[1]
            dst_dtype, dst_device = dst.dtype, dst.device
        dst_dtype = dst_dtype or src.dtype
        dst_device = torch.device(dst_device) if dst_device is not None else src.device
        detail = f"{_describe(src)} -> {str(dst_dtype).removeprefix('torch.')} {dst_device.type}"
        if src.is_cuda and dst_device.type == "cpu":
            return "read", detail
        if not src.is_cuda and dst_device.type == "cuda":
            return "h2d", detail
        if not on_cuda:
            return "cpu", detail
        return ("cast" if dst_dtype != src.dtype else "copy"), detail
    if not on_cuda and (tensors or kwargs.get("device") is None or torch.device(kwargs["device"]).type != "cuda"):
        return "cpu", ""
    if name == "clone":
        return "copy", _describe(args[0])
    return None, ""


def _value_unknown(func, args, err: Exception):
    """What a value read returns under fake tensors (see the module docstring)."""
    name = func.overloadpacket.__name__
    if name == "nonzero":
        return torch.empty(0, args[0].dim(), dtype=torch.int64, device=args[0].device)
    if name in ("is_nonzero", "equal", "allclose"):
        return True
    if name == "_local_scalar_dense":
        return True if args[0].dtype == torch.bool else (1.0 if args[0].is_floating_point() else 1)
    raise err


def _folders(roots: Dict[str, str]) -> List[Tuple[str, str]]:
    return sorted(((os.path.join(path, ""), name) for name, path in roots.items()), reverse=True)  # longest first


class Sources:
    """The innermost frame of the stack in one of ``roots`` (name -> folder), as ``root/file:function:line``;
    without one, the innermost in ``fallback`` (e.g. torch's own optimizer code); files ending in ``skip``
    (the audit's own) never count."""

    def __init__(self, roots: Dict[str, str], fallback: Dict[str, str], skip: Sequence[str] = ()):
        self.roots, self.fallback, self.skip = _folders(roots), _folders(fallback), tuple(skip)

    def here(self, fallback: bool = True) -> Optional[str]:
        found = None
        frame = sys._getframe(1)
        while frame is not None:
            path = frame.f_code.co_filename
            if not path.endswith(self.skip):
                for folders in (self.roots,) if found or not fallback else (self.roots, self.fallback):
                    for folder, name in folders:
                        if path.startswith(folder):
                            where = f"{name}/{path[len(folder) :]}:{frame.f_code.co_qualname}:{frame.f_lineno}"
                            if folders is self.roots:
                                return where
                            found = found or where
            frame = frame.f_back
        return found


class _NodeSources(TorchFunctionMode):
    """Writes into the metadata of every autograd node a forward call makes the function that called it and
    the audit's layer."""

    def __init__(self, audit: "OpAudit"):
        super().__init__()
        self.audit = audit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if func in HOST_DATA and device is not None and torch.device(device).type == "cuda":
            # made on the host and copied, as on a GPU (a fake CUDA device cannot take the data directly)
            return func(*args, **{**kwargs, "device": "cpu"}).to(device)
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            node = getattr(t, "grad_fn", None) if isinstance(t, torch.Tensor) else None
            if node is not None and SOURCE_KEY not in node.metadata:
                node.metadata[SOURCE_KEY] = self.audit.sources.here() or "?"
                node.metadata[LAYER_KEY] = self.audit.layer
        return out


def inherit_tags(root) -> None:
    """Nodes of the graph below ``root`` that no function call tagged (a custom ``autograd.Function``'s,
    gradient accumulators) take the source and layer of the node that consumes their output."""
    stack, seen = [root], {root}
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None or child in seen:
                continue
            seen.add(child)
            if SOURCE_KEY not in child.metadata:
                child.metadata[SOURCE_KEY] = node.metadata.get(SOURCE_KEY, "?")
                child.metadata[LAYER_KEY] = node.metadata.get(LAYER_KEY)
            stack.append(child)


class OpAudit(TorchDispatchMode):
    """Records an :class:`Op` per aten op; ``phase`` and ``layer`` label the ops that follow (the caller sets
    them; in a backward the layer comes from the autograd node, see :func:`inherit_tags`)."""

    def __init__(self, sources: Sources):
        super().__init__()
        self.sources = sources
        self.ops: List[Op] = []
        self.phase = ""
        self.layer: Optional[int] = None
        self._node_sources = _NodeSources(self)

    def __enter__(self):
        self._node_sources.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._node_sources.__exit__(*exc)

    def _where(self) -> Tuple[Optional[int], str]:
        node = torch._C._current_autograd_node()
        layer = self.layer if node is None else node.metadata.get(LAYER_KEY)
        source = self.sources.here(fallback=node is None)
        if source is None and node is not None:
            source = f"backward of {node.metadata.get(SOURCE_KEY, '?')} ({node.name()})"
        return layer, source or "?"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

        kwargs = kwargs or {}
        if func.namespace in SKIPPED:
            return func(*args, **kwargs)
        kind, detail = classify(func, args, kwargs, _tensors(args, kwargs))
        layer, source = self._where()
        self.ops.append(Op(_name(func), self.phase, layer, source, _allocates(func), kind, detail))
        try:
            return func(*args, **kwargs)
        except (DataDependentOutputException, DynamicOutputShapeException) as err:
            return _value_unknown(func, args, err)


def counts(ops: Sequence[Op]) -> Dict[str, int]:
    """ops, allocating, and one count per kind."""
    kinds = Counter(op.kind for op in ops)
    out = {"ops": len(ops), "alloc": sum(op.allocates for op in ops)}
    out.update({kind: kinds.get(kind, 0) for kind in ("read", "h2d", "cast", "copy", "cpu")})
    return out
