"""A fake CUDA device on a CPU-only torch build: the GPU path runs its host side, nothing is computed.

Inside :func:`fake_cuda`, tensors are ``FakeTensor`` s (``torch._subclasses.fake_tensor``): shapes, dtypes
and devices without storage, so ``device="cuda"`` works and an op costs only its host-side dispatch. A CPU
build of torch has no CUDA device guard and reports no accelerator, which autograd needs for CUDA tensors
(``InputBuffer::add`` asks for the device's current stream); a small C++ library (:data:`SOURCE`, compiled
once with the system's C++ compiler and cached) supplies both, switched on only inside the block. Every
Triton launch (``kernel[grid](...)``) is recorded by kernel name and skipped; the ``torch.cuda`` queries and
the Triton driver calls of the GPU path answer as an H200 would (:data:`DEVICE`).

>>> with fake_cuda() as launches:  # doctest: +SKIP
...     x = torch.empty(8, 1024, device="cuda")
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Iterator, List
from unittest import mock

import torch
from torch._subclasses import fake_tensor
from torch._subclasses.fake_tensor import FakeTensorMode

SOURCE = r"""
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/impl/FakeGuardImpl.h>

namespace {

c10::impl::FakeGuardImpl<c10::DeviceType::CUDA> fake_guard;

struct FakeCUDAHooks final : at::CUDAHooksInterface {
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  bool hasCUDA() const override { return true; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  void init() const override {}
  c10::DeviceIndex deviceCount() const override { return 1; }
  c10::DeviceIndex getCurrentDevice() const override { return 0; }
  c10::DeviceIndex current_device() const override { return 0; }
  int getNumGPUs() const override { return 1; }
};

FakeCUDAHooks fake_hooks;
void* stub_vptr = nullptr;
const c10::impl::DeviceGuardImplInterface* guard_before = nullptr;

void** vptr_of(const at::CUDAHooksInterface& hooks) {
  return reinterpret_cast<void**>(const_cast<at::CUDAHooksInterface*>(&hooks));
}

}  // namespace

// torch makes its CUDA hooks object once (a stub in a CPU build): while on, its virtual table is
// FakeCUDAHooks' (neither class holds data), and the device guard registry's CUDA entry is fake_guard
// (off: the entry from before, e.g. the no-op guard FakeTensorMode sets on a CPU build).
extern "C" int fake_cuda_switch(int enable) {
  static_assert(sizeof(FakeCUDAHooks) == sizeof(at::CUDAHooksInterface));
  void** hooks = vptr_of(at::detail::getCUDAHooks());
  if (stub_vptr == nullptr) stub_vptr = *hooks;
  *hooks = enable ? *vptr_of(fake_hooks) : stub_vptr;
  auto& entry = c10::impl::device_guard_impl_registry[static_cast<size_t>(c10::DeviceType::CUDA)];
  if (enable) {
    guard_before = entry.exchange(&fake_guard);
  } else {
    entry.store(guard_before);
  }
  return at::detail::getCUDAHooks().hasCUDA() ? 1 : 0;
}
"""

# what the fake device reports (an H200: sm_90, 132 SMs, 227 KiB shared memory per block)
DEVICE = dict(
    name="NVIDIA H200 (fake)",
    major=9,
    minor=0,
    multi_processor_count=132,
    total_memory=150_000_000_000,
    shared_memory_per_block=49152,
    shared_memory_per_block_optin=232448,
    warp_size=32,
    L2_cache_size=52_428_800,
)

_MODE: List[FakeTensorMode] = []  # one FakeTensorMode for the process: fake tensors kept in caches stay usable


def cache_dir() -> Path:
    return Path(os.environ.get("QDELTA_CACHE", Path.home() / ".cache" / "qdelta"))


def _compile(target: Path) -> None:
    from torch.utils.cpp_extension import include_paths

    lib_dir = Path(torch.__file__).parent / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, out = Path(tmp) / "fake_cuda.cpp", Path(tmp) / target.name
        src.write_text(SOURCE)
        includes = [f"-I{p}" for p in include_paths()]
        command = [os.environ.get("CXX", "c++"), "-std=c++17", "-shared", "-fPIC", "-O1", "-w"]
        command += [f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *includes, str(src), "-o", str(out)]
        command += [f"-L{lib_dir}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib_dir}"]
        try:
            done = subprocess.run(command, capture_output=True, text=True)
        except FileNotFoundError as err:
            raise RuntimeError(f"the fake CUDA device needs a C++ compiler (set CXX): {err}") from None
        if done.returncode != 0:
            raise RuntimeError(f"compiling the fake CUDA device failed:\n{done.stderr[-2000:]}")
        os.replace(out, target)  # atomic: a parallel build leaves one complete file


@functools.lru_cache(maxsize=None)
def _library() -> ctypes.CDLL:
    if torch.backends.cuda.is_built():
        raise RuntimeError("this torch build has CUDA: fake CUDA tensors need no fake device there")
    tag = hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
    target = cache_dir() / f"fake_cuda-torch{torch.__version__}-{tag}.so"
    if not target.is_file():
        _compile(target)
    return ctypes.CDLL(str(target), mode=ctypes.RTLD_GLOBAL)


HOST_CONSTANTS = 1 << 16  # CPU tensors of up to this many elements made from Python data keep their values


class _FakeMode(FakeTensorMode):
    # as on any CPU build, whatever the patched torch.cuda.is_available says: no real CUDA tensor is made
    avoid_device_init = True


def _fake_mode() -> FakeTensorMode:
    if not _MODE:
        _MODE.append(_FakeMode())
    return _MODE[0]


class _DeviceContext:
    """``torch.cuda.device(i)``: nothing to switch on one fake device."""

    def __init__(self, device=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _FakeDriver:
    """The parts of Triton's active driver that launch wrappers query (fla's ``fla.utils`` at import)."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", DEVICE["major"] * 10 + DEVICE["minor"], DEVICE["warp_size"])
        props = {"multiprocessor_count": DEVICE["multi_processor_count"], "max_shared_mem": 232448}
        self.utils = types.SimpleNamespace(get_device_properties=lambda index=0: dict(props))

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cuda", 0)

    def get_device_interface(self):
        return torch.cuda


def _kernel_name(kernel) -> str:
    while not hasattr(kernel, "__name__") and hasattr(kernel, "fn"):  # autotuner / heuristics wrappers
        kernel = kernel.fn
    return getattr(kernel, "__name__", type(kernel).__name__)


def _cuda_patches(stack: contextlib.ExitStack) -> None:
    props = types.SimpleNamespace(**DEVICE)
    answers = dict(
        is_available=lambda: True,
        is_initialized=lambda: True,
        device_count=lambda: 1,
        current_device=lambda: 0,
        get_device_capability=lambda device=None: (DEVICE["major"], DEVICE["minor"]),
        get_device_name=lambda device=None: DEVICE["name"],
        get_device_properties=lambda device=None: props,
        synchronize=lambda device=None: None,
        set_device=lambda device: None,
        device=_DeviceContext,
    )
    for name, answer in answers.items():
        stack.enter_context(mock.patch.object(torch.cuda, name, answer))


@contextlib.contextmanager
def fake_cuda() -> Iterator[List[str]]:
    """Fake tensors with a CUDA device inside the block; yields the list of Triton kernels launched
    (names, in order). Not reentrant."""
    import importlib

    import triton.runtime.jit

    triton_driver = importlib.import_module("triton.runtime.driver").driver  # the module's name is shadowed
    lib = _library()
    launches: List[str] = []

    def launcher(kernel, grid):
        def launch(*args, **kwargs):
            launches.append(_kernel_name(kernel))

        return launch

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(triton.runtime.jit.KernelInterface, "__getitem__", launcher))
        stack.enter_context(mock.patch.object(triton_driver, "_active", _FakeDriver()))
        _cuda_patches(stack)
        # host-side CPU tensors (sequence bounds, chunk tables) keep their values, as on a GPU machine
        stack.enter_context(mock.patch.object(fake_tensor, "CONSTANT_NUMEL_LIMIT", HOST_CONSTANTS))
        if lib.fake_cuda_switch(1) != 1:
            raise RuntimeError("the fake CUDA device did not switch on")
        stack.callback(lib.fake_cuda_switch, 0)
        stack.enter_context(_fake_mode())
        yield launches


if __name__ == "__main__":  # build the library ahead (e.g. before a timed test run)
    print(_library()._name, file=sys.stderr)
