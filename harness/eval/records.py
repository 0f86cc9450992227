"""Run records: ``results/runs/<run-id>/``, written atomically, resumable per (model, task).

Layout of one run::

    summary.json              model path + weights hash, model info, seeds, git commit, package
                              versions, device, the command, and per task: status, version, data
                              hash, metrics, prefix-reuse savings, overflow events, seconds
    results.json              lm-eval's results JSON, merged over the finished tasks
    tasks/<task>/samples.jsonl   lm-eval's per-sample records (doc, arguments, responses, metrics)
    tasks/<task>/results.json    lm-eval's results JSON of that task; its presence = task finished

A task's samples are written before its results, each through a temporary file and
``os.replace`` (files get the user's umask), so a killed run leaves either a finished task or
none. Re-running the same command finds the same run id and skips finished tasks whose recorded
weights hash, task version and data hash match the current ones (each task entry states them and
the ``code`` version that wrote it); failed or stale tasks are rerun. A process writing a run
folder holds ``<run>/.lock`` (``flock``): a second ``qdelta eval`` on the same run waits, then finds
the tasks done.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import subprocess
import tempfile
from contextlib import contextmanager
from importlib import metadata as _metadata
from pathlib import Path
from typing import Dict, Iterable, List, Optional

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
RESULTS = "results.json"
ENTRY = "entry.json"  # the task's summary entry, kept beside its results
SAMPLES = "samples.jsonl"
LOCK = ".lock"  # held by the process writing the folder
PACKAGES = (
    "qdelta",
    "torch",
    "transformers",
    "lm_eval",
    "datasets",
    "tokenizers",
    "triton",
    "accelerate",
    "safetensors",
    "numpy",
)


def _json_default(obj):
    from lm_eval.utils import handle_non_serializable

    return handle_non_serializable(obj)


def to_json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default, ensure_ascii=False)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``;
    the file gets the permissions of a plain ``open`` (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def folder_lock(folder: Path, on_wait=None):
    """Hold an exclusive ``flock`` on ``folder/.lock`` (created) for the block; another process
    holding it makes this wait (``on_wait()`` is called once first)."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_hash(folder) -> Optional[str]:
    """sha256 over the checkpoint's weight files (name + content hash, sorted); None if none."""
    if folder is None or not Path(str(folder)).is_dir():
        return None
    files = sorted(p for p in Path(str(folder)).iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    if not files:
        return None
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.name}:{sha256_file(p)}\n".encode())
    return digest.hexdigest()


def data_hash(docs: Iterable) -> str:
    """sha256 of the evaluated documents, JSON-serialised in order."""
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(json.dumps(doc, sort_keys=True, default=_json_default).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def code_version() -> str:
    """``qdelta <version> @ <git commit>`` of the running code (commit omitted outside git)."""
    commit = git_commit(Path(__file__).resolve().parent)
    version = package_versions().get("qdelta") or "?"
    return f"qdelta {version}" + (f" @ {commit}" if commit else "")


def git_commit(repo: Path) -> Optional[str]:
    """HEAD of the repository holding ``repo`` (``+dirty`` when tracked files differ); None outside git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) if head else None


def package_versions() -> Dict[str, Optional[str]]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = _metadata.version(name.replace("_", "-"))
        except _metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def device_description(device) -> str:
    import torch

    if device is None:
        return "n/a (the model places itself)"
    text = str(device)
    if text.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(text).index or 0
        return f"{text} ({torch.cuda.get_device_name(index)})"
    return f"{text} ({platform.machine()}, {torch.get_num_threads()} threads)"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    """One run folder. Nothing is created on disk before :meth:`start`."""

    def __init__(self, runs_dir, run_id: str):
        self.path = Path(runs_dir) / run_id
        self.run_id = run_id

    def task_dir(self, task: str) -> Path:
        return self.path / "tasks" / task

    def is_finished(self, task: str) -> bool:
        return (self.task_dir(task) / RESULTS).is_file()

    def summary(self) -> dict:
        file = self.path / SUMMARY
        return json.loads(file.read_text()) if file.is_file() else {}

    def start(self, header: dict) -> None:
        """Create the folder (or reopen it) and write the summary header; keeps finished tasks."""
        previous = self.summary()
        tasks = previous.get("tasks", {})
        for entry_file in sorted(self.path.glob(f"tasks/*/{ENTRY}")):  # a kill can land before the summary update
            if (entry_file.parent / RESULTS).is_file():
                tasks[entry_file.parent.name] = json.loads(entry_file.read_text())
        summary = {
            **header,
            "run_id": self.run_id,
            "created": previous.get("created", now()),
            "updated": now(),
            "status": "running",
            "tasks": tasks,
        }
        for task_dir in (self.path / "tasks").glob("*") if (self.path / "tasks").is_dir() else []:
            for stale in task_dir.glob(".*.tmp"):
                stale.unlink()
        atomic_write_text(self.path / SUMMARY, to_json(summary))

    def _update(self, task: str, entry: dict, **fields) -> None:
        summary = self.summary()
        summary.setdefault("tasks", {})[task] = entry
        summary.update(fields, updated=now())
        atomic_write_text(self.path / SUMMARY, to_json(summary))

    def write_task(self, task: str, results: dict, samples: List[dict], entry: dict) -> None:
        """samples.jsonl and the task's summary entry, then results.json (the finished marker), then
        the run summary (rebuilt from the task folders by :meth:`start` if a kill lands before it)."""
        folder = self.task_dir(task)
        lines = "".join(json.dumps(s, default=_json_default, ensure_ascii=False) + "\n" for s in samples)
        entry = {**entry, "status": "done"}
        atomic_write_text(folder / SAMPLES, lines)
        atomic_write_text(folder / ENTRY, to_json(entry))
        atomic_write_text(folder / RESULTS, to_json(results))
        self._update(task, entry)

    def entry(self, task: str) -> dict:
        """The recorded summary entry of a finished task (its ``entry.json``, else the summary's)."""
        file = self.task_dir(task) / ENTRY
        return json.loads(file.read_text()) if file.is_file() else self.summary().get("tasks", {}).get(task, {})

    def reusable(self, task: str, weights_sha256: Optional[str], version, data_sha256: Optional[str]) -> bool:
        """True when ``task`` is finished in this record with the same weights, task version and
        (where both are known) generated data as now. Entries older than the per-task fields fall
        back to the run's ``weights_sha256``."""
        if not self.is_finished(task):
            return False
        entry = self.entry(task)
        recorded_weights = entry.get("weights_sha256", self.summary().get("weights_sha256"))
        if recorded_weights != weights_sha256 or str(entry.get("version")) != str(version):
            return False
        return data_sha256 is None or entry.get("data_sha256") in (None, data_sha256)

    def code_of(self, task: str) -> str:
        """The code version that wrote a finished task: its ``code`` field, else the run's commit."""
        entry = self.entry(task)
        return entry.get("code") or self.summary().get("git_commit") or "unknown code"

    def write_failure(self, task: str, error: str) -> None:
        self._update(task, {"status": "failed", "error": error, "when": now()})

    def finish(self, task_order: List[str]) -> dict:
        """Merge the finished tasks' lm-eval results into one results.json; set the run status."""
        merged: dict = {}
        for task in task_order:
            if not self.is_finished(task):
                continue
            part = json.loads((self.task_dir(task) / RESULTS).read_text())
            for key, value in part.items():
                if isinstance(value, dict) and key not in ("config",):
                    merged.setdefault(key, {}).update(value)
                else:
                    merged.setdefault(key, value)
        atomic_write_text(self.path / RESULTS, to_json(merged))
        summary = self.summary()
        failed = [t for t, e in summary.get("tasks", {}).items() if e.get("status") == "failed"]
        missing = [t for t in task_order if not self.is_finished(t)]
        status = "done" if not missing else ("failed" if failed else "incomplete")
        self._update_status(status)
        return merged

    def _update_status(self, status: str) -> None:
        summary = self.summary()
        summary.update(status=status, updated=now())
        atomic_write_text(self.path / SUMMARY, to_json(summary))


def load_runs(runs_dir) -> List[dict]:
    """Every run record under ``runs_dir``: its summary plus, per finished task, the lm-eval results
    and the path of its samples. Sorted by run id."""
    runs = []
    root = Path(runs_dir)
    if not root.is_dir():
        return runs
    for folder in sorted(p for p in root.iterdir() if (p / SUMMARY).is_file()):
        summary = json.loads((folder / SUMMARY).read_text())
        finished = {}
        for task_dir in sorted((folder / "tasks").glob("*")) if (folder / "tasks").is_dir() else []:
            if (task_dir / RESULTS).is_file():
                finished[task_dir.name] = {
                    "results": json.loads((task_dir / RESULTS).read_text()),
                    "samples_path": task_dir / SAMPLES,
                }
        runs.append({"path": folder, "summary": summary, "tasks": finished})
    return runs


def read_samples(path: Path) -> List[dict]:
    if not Path(path).is_file():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
