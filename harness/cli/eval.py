"""``qdelta eval``: lm-eval's own evaluation with our model and tasks registered, into run records.

Every lm-eval ``run`` option is accepted (``--model``, ``--model_args``, ``--tasks``, ``--limit``,
``--batch_size``, ``--device``, ``--num_fewshot``, ``--gen_kwargs``, ``--seed``, ``--metadata``,
``--include_path`` ...). Our task folder is always on the include path; ``metadata`` gets
``tokenizer=<pretrained>`` for tokenizer-dependent tasks unless given. Each leaf task runs through
``lm_eval.simple_evaluate`` on its own (seeded the same way every time) and is written to the run
record as soon as it finishes, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import List, Optional

log = logging.getLogger(__name__)

HELP = "evaluate with lm-eval (model `qdelta`, tasks qd_*) into run records; no arguments: the README main job"
MAIN_JOB_GROUP = "qd_recall_quick"
MAIN_JOB_BATCH = "32"
RUN_ID_KEYS = (
    "model",
    "model_args",
    "tasks",
    "limit",
    "samples",
    "num_fewshot",
    "gen_kwargs",
    "seed",
    "metadata",
    "apply_chat_template",
    "fewshot_as_multiturn",
    "system_instruction",
    "predict_only",
)

EPILOG = """lm-eval options: every `lm-eval run` option is accepted (see `lm-eval run --help`).

examples:
  qdelta eval                     # every checkpoint under results/checkpoints/ on qd_recall_quick, then the leaderboard
  qdelta eval --model qdelta --model_args pretrained=results/checkpoints/qdelta-tiny-recall --tasks qd_recall_quick
  qdelta eval --model qdelta --model_args pretrained=CKPT,dtype=bfloat16 --device cuda:0 --batch_size 64 --tasks qd_recall
  qdelta eval --model hf --model_args pretrained=EleutherAI/pythia-160m --tasks qd_recall_quick --limit 20
  accelerate launch -m qdelta.harness.cli eval --model qdelta --model_args pretrained=CKPT --tasks qd_recall
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default="results/runs", help="run records root (default: results/runs)")
    parser.add_argument(
        "--leaderboard-dir",
        default="results/leaderboards",
        help="where the leaderboard is rebuilt after the run (default: results/leaderboards)",
    )
    parser.add_argument(
        "--checkpoints-dir",
        default="results/checkpoints",
        help="checkpoints evaluated by the no-argument main job (default: results/checkpoints)",
    )
    parser.add_argument(
        "--run-id", default=None, help="name of the run folder (default: <model>-<hash of the command>)"
    )
    parser.add_argument("--no-leaderboard", action="store_true", help="do not rebuild the leaderboard afterwards")
    parser.epilog = EPILOG
    parser.set_defaults(_accepts_extra=True, _log_level=logging.WARNING)  # progress lines instead; -v for INFO


# ---------------------------------------------------------------- argument handling
def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def parse_lm_eval_args(extra: List[str]):
    """lm-eval's own ``run`` parser on our extra arguments -> a validated ``EvaluatorConfig``."""
    from lm_eval._cli.run import Run
    from lm_eval.config.evaluate_config import EvaluatorConfig

    holder = argparse.ArgumentParser(prog="qdelta eval", add_help=False)
    run_parser = Run(holder.add_subparsers())._parser

    def fail(message: str):
        hint = ""
        if "model_args" in message or "key=value" in message:
            hint = "; write --model_args key=value,key2=value2 e.g. --model_args pretrained=results/checkpoints/NAME,dtype=float32"
        raise ValueError(f"{message}{hint}")

    run_parser.error = fail
    namespace = run_parser.parse_args(extra)
    if not namespace.tasks:
        raise ValueError("no --tasks given; e.g. --tasks qd_recall_quick (list them with `qdelta tasks list`)")
    if namespace.model is None:
        raise ValueError("no --model given; e.g. --model qdelta --model_args pretrained=results/checkpoints/NAME")
    try:
        cfg = EvaluatorConfig.from_cli(namespace)
    except (ValueError, TypeError) as err:
        raise ValueError(f"invalid lm-eval arguments: {_one_line(err)}") from None
    for key in ("batch_size", "max_batch_size", "device"):
        if key in (cfg.model_args or {}):
            value = cfg.model_args[key]
            raise ValueError(
                f"--model_args {key}={value}: lm-eval passes --{key} to the model itself; "
                f"drop it from --model_args and write --{key} {value}"
            )
    given = any(a == "--device" or a.startswith("--device=") for a in extra)
    cfg.device = resolve_device(cfg.device if given else "auto")
    return cfg


def resolve_device(device: Optional[str]) -> str:
    """``auto`` (the default) -> ``cuda:0`` when CUDA is there, else ``cpu``; CUDA without CUDA is an error."""
    import torch

    text = str(device or "auto").strip()
    if text == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"--device {text}: CUDA is not available on this machine; use --device cpu "
            "(or leave --device out: the default, auto, takes the GPU when there is one)"
        )
    return text


def make_run_id(cfg) -> str:
    """``<label>-<10 hex>``: the same command on the same weights gives the same id (device and
    batch size excluded), so re-running it resumes; retrained weights get a new run."""
    from qdelta.harness.eval.records import weights_hash

    fields = {key: getattr(cfg, key, None) for key in RUN_ID_KEYS}
    fields["model_args"] = {
        k: v for k, v in sorted((cfg.model_args or {}).items()) if k not in ("batch_size", "device", "max_batch_size")
    }
    pretrained = (cfg.model_args or {}).get("pretrained")
    fields["weights_sha256"] = weights_hash(pretrained)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]
    label = Path(str(pretrained)).name if pretrained else cfg.model
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}-{digest}"


def _register_plugins():
    """Our lm-eval model ``qdelta`` and the oracle/random test models ``qd_oracle``/``qd_random``."""
    from qdelta.harness.eval import adapter  # noqa: F401
    from qdelta.tasks import oracle_models  # noqa: F401
    from qdelta.tasks.includes import enable_include_by_name

    enable_include_by_name()

    for name in ("lm_eval.api.task", "lm_eval.evaluator_utils"):
        if _drop_metadata_hint not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_drop_metadata_hint)


IRRELEVANT_HINTS = (
    "Custom kwargs can be passed to `--metadata`",  # RULER's max_seq_lengths: our tasks use context_lengths
    "No aggregation function defined for metric acc_",  # per-slice metrics: mean, as intended
    "Metrics were not scored on the same number of documents",  # a slice covers part of the docs by design
)


def _drop_metadata_hint(record: logging.LogRecord) -> bool:
    """False for lm-eval warnings that do not apply to our tasks (see IRRELEVANT_HINTS)."""
    message = record.getMessage()
    return not any(hint in message for hint in IRRELEVANT_HINTS)


def resolve_tasks(requested: List[str], include_path: Optional[str], metadata: dict):
    """A TaskManager (ours alone when that suffices: indexing lm-eval's 14k tasks takes ~15 s) and the names."""
    from lm_eval.tasks import TaskManager

    from qdelta.tasks import TASKS_DIR

    paths = [str(TASKS_DIR)] + ([include_path] if include_path else [])
    if include_path:
        check_include_path(Path(include_path))

    def missing_in(manager):
        return [t for t in requested if not Path(t).is_file() and not manager.match_tasks([t])]

    manager = TaskManager(include_path=paths, include_defaults=False, metadata=metadata)
    if any(not t.startswith("qd_") for t in missing_in(manager)):  # qd_* names are never lm-eval built-ins
        manager = TaskManager(include_path=paths, include_defaults=True, metadata=metadata)
    missing = missing_in(manager)
    if missing:
        raise ValueError(
            f"unknown task(s): {', '.join(missing)}; list ours with `qdelta tasks list` and lm-eval's with "
            "`lm-eval ls tasks`, or add --include_path DIR for your own YAML"
        )
    names = []
    for t in requested:
        for name in [t] if Path(t).is_file() else manager.match_tasks([t]):
            if name not in names:
                names.append(name)
    return manager, names


def check_include_path(folder: Path) -> None:
    """Every YAML file under ``--include_path`` parses (lm-eval skips a broken one without a word)."""
    from qdelta.tasks.validate import yaml_syntax_error

    if not folder.is_dir():
        raise ValueError(f"--include_path {folder}: not a folder; give a folder of task YAML files")
    for path in sorted(folder.rglob("*.yaml")):
        problem = yaml_syntax_error(path)
        if problem:
            raise ValueError(f"{problem}; fix the file (`qdelta tasks validate {path}` lists every problem)")


def check_model(cfg):
    """The registered model class; for ``qdelta`` also checks the checkpoint folder (cheap, no loading)."""
    from lm_eval.api.registry import get_model

    from qdelta.harness.eval.adapter import check_checkpoint

    try:
        model_class = get_model(cfg.model)
    except ValueError:
        raise ValueError(
            f"unknown --model {cfg.model!r}; use qdelta (our checkpoints), hf, qd_oracle, qd_random "
            "or a name from lm-eval's models"
        ) from None
    if cfg.model == "qdelta":
        if "pretrained" not in (cfg.model_args or {}):
            raise ValueError("--model qdelta needs --model_args pretrained=PATH (a folder under results/checkpoints/)")
        check_checkpoint(cfg.model_args["pretrained"])
    return model_class


def build_model(cfg, model_class):
    """The lm-eval model, built exactly as ``simple_evaluate`` would build it from the CLI."""
    try:
        return model_class.create_from_arg_obj(
            cfg.model_args, {"batch_size": cfg.batch_size, "max_batch_size": cfg.max_batch_size, "device": cfg.device}
        )
    except (ValueError, TypeError, OSError, KeyError) as err:
        raise ValueError(
            f"could not build --model {cfg.model} from --model_args {cfg.model_args}: {_one_line(err)}"
        ) from None


@contextmanager
def env_info_once():
    """lm-eval adds `torch.utils.collect_env` output (~1 s) and `git describe` of the working folder
    (a "fatal: not a git repository" line outside git) to every result: both once, quietly."""
    import subprocess

    import lm_eval.evaluator as evaluator

    original, original_git = evaluator.add_env_info, evaluator.get_git_commit_hash
    cached: dict = {}
    original(cached)
    described = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True)  # noqa: S607
    git_hash = described.stdout.strip() or None
    evaluator.add_env_info = lambda storage: storage.update(cached)
    evaluator.get_git_commit_hash = lambda: git_hash
    try:
        yield
    finally:
        evaluator.add_env_info, evaluator.get_git_commit_hash = original, original_git


# ---------------------------------------------------------------- one run
def evaluate_run(cfg, runs_dir: Path, run_id: Optional[str], command: str) -> dict:
    """Evaluate one model on its tasks into ``runs_dir/<run-id>``; returns {'run_id', 'failed', 'merged'}."""

    from qdelta.harness.eval import records

    pretrained = (cfg.model_args or {}).get("pretrained")
    metadata = dict(cfg.metadata or {})
    if pretrained and Path(str(pretrained)).is_dir() and "tokenizer" not in metadata:
        metadata["tokenizer"] = str(pretrained)
    cfg.metadata = metadata
    run_id = run_id or make_run_id(cfg)
    model_class = check_model(cfg)
    manager, task_names = resolve_tasks(list(cfg.tasks), cfg.include_path, metadata)
    lm = build_model(cfg, model_class)
    try:
        loaded = manager.load(task_names)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        raise ValueError(f"could not build task(s) {', '.join(task_names)}: {_one_line(err)}") from None
    if cfg.model == "qdelta":
        check_generation_kwargs(loaded["tasks"], cfg.gen_kwargs, lm.max_gen_toks)
    record = records.RunRecord(runs_dir, run_id)
    writer = lm.rank == 0

    def waiting():
        print(f"{record.path}: another qdelta eval is writing this run; waiting for it", file=sys.stderr, flush=True)

    with records.folder_lock(record.path, on_wait=waiting) if writer else nullcontext():
        return _evaluate_tasks(cfg, lm, manager, loaded, record, command, pretrained, metadata)


def check_generation_kwargs(tasks: dict, gen_kwargs, default_max_gen_toks: int) -> None:
    """Generation arguments ``--model qdelta`` cannot honour (sampling, beams, unknown keys) are refused
    before anything runs: each generation task's ``generation_kwargs`` updated by ``--gen_kwargs``, as
    ``simple_evaluate`` updates them."""
    from lm_eval.utils import simple_parse_args_string

    from qdelta.harness.eval.generation import greedy_settings

    override = simple_parse_args_string(gen_kwargs) if isinstance(gen_kwargs, str) else dict(gen_kwargs or {})
    for name, task in tasks.items():
        if task.get_config("output_type") == "generate_until":
            merged = {**(task.get_config("generation_kwargs") or {}), **override}
            greedy_settings(merged, default_max_gen_toks, task=name)


def _task_identity(task) -> tuple:
    """(version, data sha256 or None) of a built lm-eval task, as its run-record entry states them."""
    data = None
    try:
        first = next(iter(task.eval_docs), None)
        data = first.get("data_hash") if isinstance(first, dict) else None
    except (TypeError, AttributeError):
        pass
    return getattr(task, "VERSION", None), data


def _evaluate_tasks(cfg, lm, manager, loaded, record, command: str, pretrained, metadata) -> dict:
    """The run's tasks into ``record`` (holding its lock); finished, matching tasks are skipped."""
    from lm_eval import simple_evaluate

    from qdelta.harness.eval import records

    run_id, writer = record.run_id, lm.rank == 0
    seeds = list(cfg.seed) if cfg.seed else [None] * 4
    leaf_tasks = list(loaded["tasks"].items())
    weights = records.weights_hash(pretrained)
    identity = {name: _task_identity(task) for name, task in leaf_tasks}
    finished = {name for name, _ in leaf_tasks if record.reusable(name, weights, *identity[name])}
    stale = sorted(name for name, _ in leaf_tasks if record.is_finished(name) and name not in finished)
    if finished:
        codes = sorted({record.code_of(name) for name in finished})
        print(
            f"{run_id}: {len(finished)} of {len(leaf_tasks)} tasks already in the run record (same weights and "
            f"task versions; made by {', '.join(codes)}): skipped; delete {record.path} to recompute",
            file=sys.stderr,
        )
    if stale:
        print(
            f"{run_id}: recorded {', '.join(stale)} came from other weights or another task version: rerun",
            file=sys.stderr,
        )
    if record.summary().get("status") == "done" and len(finished) == len(leaf_tasks):
        # nothing to evaluate: leave the record as it was written (its commit, times, device)
        merged = json.loads((record.path / records.RESULTS).read_text()) if writer else {}
        return {"run_id": run_id, "failed": [], "merged": merged, "writer": writer, "path": record.path}
    if writer:
        header = {
            "command": command,
            "model": cfg.model,
            "model_args": cfg.model_args,
            "model_label": run_id.rsplit("-", 1)[0],
            "pretrained": str(pretrained) if pretrained else None,
            "weights_sha256": weights,
            "model_info": _model_info(lm),
            "tasks_requested": list(cfg.tasks),
            "tasks": {},
            "group_map": loaded.get("group_map", {}),
            "limit": cfg.limit,
            "num_fewshot": cfg.num_fewshot,
            "gen_kwargs": cfg.gen_kwargs,
            "metadata": metadata,
            "seed": seeds,
            "git_commit": records.git_commit(Path(__file__).resolve().parent),
            "packages": records.package_versions(),
            "device": records.device_description(lm.device),
            "world_size": lm.world_size,
            "batch_size": cfg.batch_size,
        }
        record.start(header)
    failed = []
    tracker = None
    if cfg.output_path and writer:  # lm-eval's own output files too, as `lm-eval run --output_path` writes them
        from lm_eval.loggers import EvaluationTracker

        tracker = EvaluationTracker(output_path=cfg.output_path)
    progress = Progress(run_id, [(name, _n_docs(task, cfg.limit)) for name, task in leaf_tasks], finished, writer)
    with env_info_once(), progress.interruptible():
        for i, (name, task) in enumerate(leaf_tasks):
            if name in finished:
                continue
            progress.start(i, name)
            started = time.time()
            try:
                result = simple_evaluate(
                    model=lm,
                    tasks=[task],
                    task_manager=manager,
                    num_fewshot=cfg.num_fewshot,
                    batch_size=cfg.batch_size,
                    max_batch_size=cfg.max_batch_size,
                    device=cfg.device,
                    use_cache=cfg.use_cache,
                    limit=cfg.limit,
                    samples=cfg.samples,
                    check_integrity=cfg.check_integrity,
                    write_out=cfg.write_out,
                    log_samples=True,
                    system_instruction=cfg.system_instruction,
                    apply_chat_template=cfg.apply_chat_template,
                    fewshot_as_multiturn=bool(cfg.fewshot_as_multiturn),
                    gen_kwargs=cfg.gen_kwargs or None,
                    predict_only=cfg.predict_only,
                    random_seed=seeds[0],
                    numpy_random_seed=seeds[1],
                    torch_random_seed=seeds[2],
                    fewshot_random_seed=seeds[3],
                    confirm_run_unsafe_code=cfg.confirm_run_unsafe_code,
                    metadata=metadata,
                    evaluation_tracker=tracker,
                )
            except Exception as err:  # a failed task must not lose the others
                progress.done(i, 0, failed=True)
                log.error("%s: task %s failed: %s: %s", run_id, name, type(err).__name__, _one_line(err))
                failed.append(name)
                if writer:
                    record.write_failure(name, f"{type(err).__name__}: {_one_line(err)}")
                continue
            samples = (result or {}).pop("samples", {}).get(name, [])
            progress.done(i, sum(len(s.get("arguments") or []) for s in samples))
            stats = _all_ranks_truncation(lm, lm.take_stats()) if hasattr(lm, "take_stats") else None
            if not writer:
                continue
            result["config"].update(model=cfg.model, model_args=cfg.model_args)
            if stats is not None:
                result["truncation"] = {name: _truncation_of(lm, stats, name)}
            if tracker is not None:
                tracker.save_results_aggregated(results=result, samples={name: samples} if cfg.log_samples else None)
                if cfg.log_samples:
                    tracker.save_results_samples(task_name=name, samples=samples)
            entry = {
                "version": result.get("versions", {}).get(name),
                "weights_sha256": weights,
                "code": records.code_version(),
                "n_samples": len(samples),
                "data_sha256": next(
                    (
                        s["doc"].get("data_hash")
                        for s in samples
                        if isinstance(s.get("doc"), dict) and s["doc"].get("data_hash")
                    ),
                    None,
                ),
                "evaluated_docs_sha256": records.data_hash(s.get("doc") for s in samples),
                "metrics": result.get("results", {}).get(name, {}),
                "seconds": round(time.time() - started, 3),
                "when": records.now(),
            }
            if stats is not None:
                entry["adapter"] = stats
                entry["truncation"] = result["truncation"][name]
            record.write_task(name, result, samples, entry)
    merged = record.finish([n for n, _ in leaf_tasks]) if writer else {}
    return {"run_id": run_id, "failed": failed, "merged": merged, "writer": writer, "path": record.path}


def _all_ranks_truncation(lm, stats: dict) -> dict:
    """``stats`` with the left-truncation counts summed over the data-parallel ranks (a collective
    call: every rank makes it); one process: unchanged."""
    if lm.world_size == 1:
        return stats
    per_rank = lm.gather_object(sorted(stats.get("truncated", {}).items()))
    if per_rank is None:  # not the gathering rank
        return stats
    total: dict = {}
    for items in per_rank:
        for task, counts in items:
            summed = total.setdefault(task, {"prompts": 0, "tokens_dropped": 0})
            for key in summed:
                summed[key] += counts[key]
    return {**stats, "truncated": total}


def _truncation_of(lm, stats: dict, task: str) -> dict:
    """``{"mode", "max_length", "prompts_truncated", "tokens_dropped"}`` of one task, for its results
    JSON and run-record entry (zeros under truncation=none: nothing is cut)."""
    counts = stats.get("truncated", {}).get(task, {})
    return {
        "mode": getattr(lm, "truncation", "none"),
        "max_length": lm.max_length,
        "prompts_truncated": counts.get("prompts", 0),
        "tokens_dropped": counts.get("tokens_dropped", 0),
    }


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; its message says how far the run got."""


def _n_docs(task, limit) -> int:
    try:
        n = len(task.eval_docs)
    except (TypeError, AttributeError):
        return 0
    if limit is None:
        return n
    return min(n, int(limit) if limit >= 1 else math.ceil(n * limit))


class Progress:
    """Two stderr lines per task: ``[i/N] task (D docs)`` and what it took, docs done, time left."""

    def __init__(self, run_id: str, tasks: List[tuple], finished: set, show: bool = True):
        self.run_id, self.tasks, self.finished, self.show = run_id, tasks, set(finished), show
        self.total_docs = sum(n for _, n in tasks)
        self.docs_done = sum(n for name, n in tasks if name in finished)
        self.requests, self.seconds, self.new_docs, self._t0 = 0, 0.0, 0, 0.0

    def start(self, i: int, name: str) -> None:
        self._t0 = time.time()
        if self.show:
            print(
                f"[{i + 1}/{len(self.tasks)}] {self.run_id}: {name} ({self.tasks[i][1]} docs) ...",
                file=sys.stderr,
                flush=True,
            )

    def done(self, i: int, requests: int, failed: bool = False) -> None:
        name, docs = self.tasks[i]
        took = time.time() - self._t0
        if not failed:
            self.finished.add(name)
        self.requests += requests
        self.seconds += took
        self.docs_done += docs
        self.new_docs += docs
        left = self.total_docs - self.docs_done
        eta = f"about {_duration(self.seconds / self.new_docs * left)} left" if self.new_docs and left else "done"
        if self.show:
            print(
                f"[{i + 1}/{len(self.tasks)}] {name}: {'failed' if failed else f'{requests} requests'} in {took:.1f} s; "
                f"{len(self.finished)} of {len(self.tasks)} tasks, {self.requests} requests done; {eta}",
                file=sys.stderr,
                flush=True,
            )

    @contextmanager
    def interruptible(self):
        try:
            yield
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted after {len(self.finished)} of {len(self.tasks)} tasks; re-run the same command to resume"
            ) from None


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _model_info(lm) -> dict:
    info = lm.get_model_info() if hasattr(lm, "get_model_info") else {}
    if hasattr(lm, "state_size"):
        info["state_size"] = lm.state_size()
    return info


# ---------------------------------------------------------------- the subcommand
def main_job_argv(checkpoints_dir: Path) -> List[List[str]]:
    folders = sorted(p for p in Path(checkpoints_dir).glob("*") if (p / "config.json").is_file())
    if not folders:
        raise ValueError(
            f"no checkpoints under {checkpoints_dir}/; train one with `qdelta train` or pass "
            "--model qdelta --model_args pretrained=PATH --tasks TASKS"
        )
    return [
        [
            "--model",
            "qdelta",
            "--model_args",
            f"pretrained={p},on_overflow=count",  # a prompt past a checkpoint's window scores wrong, counted
            "--tasks",
            MAIN_JOB_GROUP,
            "--batch_size",
            MAIN_JOB_BATCH,
            "--device",
            "cpu",
        ]
        for p in folders
    ]


def run(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _register_plugins()
    jobs = [args.extra] if args.extra else main_job_argv(Path(args.checkpoints_dir))
    configs = [parse_lm_eval_args(argv) for argv in jobs]
    if args.run_id and len(configs) > 1:
        raise ValueError("--run-id names one run; the main job makes one run per checkpoint: drop --run-id")
    outcomes = []
    for argv, cfg in zip(jobs, configs):
        command = "qdelta eval " + " ".join(argv)
        print(f"== {command}", flush=True)
        outcome = evaluate_run(cfg, Path(args.runs_dir), args.run_id, command)
        outcomes.append(outcome)
        if outcome["writer"]:
            from lm_eval.utils import make_table

            if outcome["merged"].get("results"):
                print(make_table(outcome["merged"]))
            print(f"run record: {outcome['path']}", flush=True)
    if not any(o["writer"] for o in outcomes):
        return 0
    if not args.no_leaderboard:
        from qdelta.harness.eval.leaderboard import write_leaderboard

        written = write_leaderboard(Path(args.runs_dir), Path(args.leaderboard_dir))
        print((Path(args.leaderboard_dir) / "leaderboard.md").read_text())
        print("leaderboard files: " + ", ".join(str(p) for p in written))
    failed = [f"{o['run_id']}:{t}" for o in outcomes for t in o["failed"]]
    if failed:
        print(
            f"qdelta eval: {len(failed)} task(s) failed ({', '.join(failed)}); the others are recorded. "
            "Re-run the same command to retry them.",
            file=sys.stderr,
        )
        return 1
    return 0
