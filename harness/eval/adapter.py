"""The lm-eval model ``qdelta``: any of our model types, scored through EvaluatorLM conventions.

``lm_eval --model qdelta --model_args pretrained=PATH[,dtype=float32,variant=official,...]``
(or ``qdelta eval`` with the same arguments). Arguments (``--model_args``):

    pretrained           checkpoint folder (config.json + model.safetensors + tokenizer), or a
                         model instance from Python (then ``tokenizer`` is required)
    tokenizer            tokenizer folder or object; default: the checkpoint folder
    device               ``auto`` (cuda when there is one, else cpu), ``cuda``, ``cuda:N``, ``cpu``;
                         a CUDA device without CUDA is an error
    dtype                ``auto`` (the checkpoint's), ``float32``, ``bfloat16``, ``float16``, ``float64``
    batch_size           int or string (``"16"``); ``auto`` / ``auto:N`` = ``max_batch_size`` (default 64)
    variant              ``paper`` or ``official`` (DESIGN §2), passed to ``qdelta.load_model``
    prefix_reuse         ``True``: requests sharing a context prefix reuse its recurrent state
    prefix_min_fraction  share needed to group requests (fraction of the longest context, 0.5)
    max_length           the length limit requests are checked against (tokens); default
                         ``config.max_sequence_length`` (None for recurrent models: no limit), at
                         most that. ``max_length=2048,truncation=left`` is what ``--model hf``
                         does with our recurrent checkpoints (their max_position_embeddings)
    on_overflow          ``error`` (default): a request longer than the limit raises, naming the
                         task, the length and the fix; ``count``: it is scored as wrong
                         (log-likelihood -inf, empty generation), counted, logged and written to
                         the run record
    truncation           ``none`` (default) or ``left``: lm-eval's HFLM left truncation, opt-in.
                         A log-likelihood input keeps its last ``max_length`` tokens (context cut,
                         continuation whole); a generation context keeps its last
                         ``max_length - max_gen_toks``. Truncated prompts are counted per task
                         (``take_stats()['truncated']``, the run record). Not with on_overflow=count
    max_gen_toks         default generation budget when a task sets none (256)
    add_bos_token        prepend the tokenizer's special tokens when encoding (False)
    cuda_graph           ``auto`` (default): generation replays the decoding step as a CUDA graph
                         where it can (our recurrent models on CUDA; ``qdelta.generation``);
                         ``True`` requires it, ``False`` runs it eagerly. Same tokens either way

Generation is greedy, as HFLM reads the task's ``generation_kwargs`` (``generation.py``):
sampling (``do_sample: true``, or ``temperature`` > 0 without ``do_sample``) and beam search
are refused with the fix, unknown keys are refused by name. It stops at the task's stop strings,
the budget, or any end-of-text id of the tokenizer, ``config.json`` or ``generation_config.json``;
the end token is decoded with the rest, as HFLM decodes it (no text when it is a special token).
The tokens are read back in blocks of ``DECODE_BLOCK`` and checked there, so a batch may run up to
``DECODE_BLOCK - 1`` steps past its last stop (rows are independent: the kept text is the same).

Data parallel: launched with ``accelerate launch`` (WORLD_SIZE > 1) each process takes its
shard of every task through lm-eval's rank/world_size mechanism.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import lm_eval.models  # noqa: F401  (registers the built-in models first: `hf` etc. stay available)
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry, register_model
from lm_eval.models.utils import handle_stop_sequences, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from qdelta.generation import GreedyDecoder

from .generation import eos_token_ids, greedy_settings
from .scoring import ReuseStats, common_prefix_len, plan_prefix_groups, repeat_cache, score_requests

log = logging.getLogger(__name__)

QDELTA_MODEL_TYPES = ("qdelta", "gated_deltanet", "delta_net", "linear_attn", "transformer")
OVERFLOW_POLICIES = ("error", "count")
TRUNCATION_MODES = ("none", "left")
MODEL_ARGS = (
    "pretrained, tokenizer, device, dtype, batch_size, max_batch_size, variant, prefix_reuse, "
    "prefix_min_fraction, max_length, on_overflow, truncation, max_gen_toks, add_bos_token, cuda_graph"
)
DECODE_BLOCK = 16  # generated tokens read back to the host at a time (stop strings are checked there)
_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def parse_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"model arg {name} must be true or false, got {value!r}; e.g. {name}=false")


def parse_batch_size(batch_size, max_batch_size=None) -> int:
    """lm-eval's CLI passes a string: ``"8"``, ``"auto"`` or ``"auto:4"``."""
    text = str(batch_size if batch_size is not None else 1).strip().lower()
    if text.startswith("auto"):
        size = int(max_batch_size or 64)
        log.info("batch_size=%s: qdelta uses a fixed batch of %d (max_batch_size sets it)", text, size)
        return size
    try:
        size = int(text)
    except ValueError:
        raise ValueError(
            f"batch_size must be a positive integer or 'auto', got {batch_size!r}; e.g. --batch_size 16"
        ) from None
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}; e.g. --batch_size 16")
    return size


def resolve_device(device: Optional[str]) -> torch.device:
    """``None`` / ``auto`` -> cuda if available else cpu; a CUDA device without CUDA is an error."""
    if device is None or str(device).strip() in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(device))
    except RuntimeError:
        raise ValueError(f"device must look like cuda, cuda:0 or cpu, got {device!r}; e.g. --device cpu") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device} but CUDA is not available on this machine; pass --device cpu (or device=auto)"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device={device} but only {torch.cuda.device_count()} CUDA device(s) are visible; pass --device cuda:0"
        )
    return dev


def parse_dtype(dtype) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    text = str(dtype).strip().lower().replace("torch.", "")
    if text == "auto":
        return None
    if text not in _DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(sorted(_DTYPES))}; got {dtype!r}; e.g. dtype=float32")
    return _DTYPES[text]


def check_checkpoint(path) -> dict:
    """The checkpoint's config.json, after checking it is one of our model types."""
    folder = Path(str(path))
    fix = (
        "pass a checkpoint folder holding config.json and model.safetensors, e.g. pretrained=results/checkpoints/<name>"
    )
    if not folder.is_dir():
        raise ValueError(f"pretrained={path!r}: no such folder; {fix}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"pretrained={path!r} has no config.json; {fix}")
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
    if model_type not in QDELTA_MODEL_TYPES:
        raise ValueError(
            f"pretrained={path!r} is a {model_type!r} checkpoint, not one of qdelta's model types "
            f"({', '.join(QDELTA_MODEL_TYPES)}); evaluate it with --model hf --model_args pretrained={path}"
        )
    return config


def _load_tokenizer(tokenizer, pretrained):
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    source = tokenizer if tokenizer is not None else pretrained
    if not isinstance(source, (str, Path)):
        raise ValueError("a model instance was passed as pretrained: pass tokenizer=<folder or tokenizer object> too")
    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as err:
        raise ValueError(
            f"could not load a tokenizer from {str(source)!r} ({type(err).__name__}); "
            "pass tokenizer=<folder with tokenizer.json> in --model_args"
        ) from None


def _cache_floats(cache) -> int:
    """Number of elements in all tensors held by a cache (walks attributes, lists, dicts)."""
    seen, total, stack = set(), 0, [cache]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            total += obj.numel()
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return total


def _cache_argument(model: torch.nn.Module) -> str:
    """The name a model's forward takes its cache by: ``cache`` (transformers>=5.25, which deprecates
    ``past_key_values`` until 5.40) or ``past_key_values`` (older releases)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def align_metric_keys(per_rank: list) -> list:
    """Give every rank's ``{task: {(metric, filter): values}}`` the same metric keys (missing -> []).

    lm-eval 0.4.13 gathers per-sample metrics from the ranks by rank 0's keys and indexes every
    rank with them: a per-slice metric (``acc_<slice>``) that some rank saw no document of raises
    KeyError. Other gathered objects (lists of samples) pass through unchanged.
    """
    if not per_rank or not all(isinstance(o, dict) and all(isinstance(v, dict) for v in o.values()) for o in per_rank):
        return per_rank
    for task in set().union(*(o.keys() for o in per_rank)):
        keys = set().union(*(o.get(task, {}).keys() for o in per_rank))
        for o in per_rank:
            metrics = o.setdefault(task, {})
            for key in keys:
                metrics.setdefault(key, [])
    return per_rank


class QDeltaLM(TemplateLM):
    """lm-eval model for our checkpoints; see the module docstring for its arguments."""

    def __init__(
        self,
        pretrained,
        tokenizer=None,
        device=None,
        dtype=None,
        batch_size=1,
        max_batch_size=None,
        variant=None,
        prefix_reuse=True,
        prefix_min_fraction=0.5,
        max_length=None,
        on_overflow="error",
        truncation="none",
        max_gen_toks=256,
        add_bos_token=False,
        cuda_graph="auto",
        trust_remote_code=None,
        **unknown,
    ):
        super().__init__()
        if unknown:
            raise ValueError(
                f"unknown --model_args for model qdelta: {', '.join(sorted(unknown))}; accepted: {MODEL_ARGS}"
            )
        if on_overflow not in OVERFLOW_POLICIES:
            raise ValueError(
                f"on_overflow must be one of {OVERFLOW_POLICIES}, got {on_overflow!r}; e.g. on_overflow=count"
            )
        truncation = str(truncation).strip().lower()
        if truncation not in TRUNCATION_MODES:
            raise ValueError(
                f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}; truncation=left is lm-eval's "
                "left truncation (keeps the last tokens)"
            )
        if truncation == "left" and on_overflow == "count":
            raise ValueError("truncation=left and on_overflow=count both handle over-length requests; pass one of them")
        self.truncation = truncation
        self.batch_size_per_gpu = parse_batch_size(batch_size, max_batch_size)
        self.prefix_reuse = parse_bool("prefix_reuse", prefix_reuse)
        self.prefix_min_fraction = float(prefix_min_fraction)
        self.on_overflow = on_overflow
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = parse_bool("add_bos_token", add_bos_token)
        torch_dtype = parse_dtype(dtype)

        self.accelerator = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import Accelerator
            from accelerate.utils import InitProcessGroupKwargs

            self.accelerator = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(weeks=52))])
            if self.accelerator.num_processes == 1:
                raise ValueError(
                    f"WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate set up one process (no GPU "
                    "per process?); on CPUs set ACCELERATE_USE_CPU=true, on GPUs launch with "
                    "`accelerate launch --multi_gpu --num_processes N`"
                )
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
            self._device = self.accelerator.device
            log.info(
                "data parallel: rank %d of %d on %s (device=%s ignored)",
                self._rank,
                self._world_size,
                self._device,
                device,
            )
        else:
            self._device = resolve_device(device)

        if isinstance(pretrained, (str, Path)):
            check_checkpoint(pretrained)
            import qdelta

            self.model = qdelta.load_model(
                str(pretrained), device=str(self._device), dtype=torch_dtype, variant=variant
            )
            self.pretrained = str(pretrained)
        elif isinstance(pretrained, torch.nn.Module):
            self.model = (
                pretrained.to(self._device) if torch_dtype is None else pretrained.to(self._device, torch_dtype)
            )
            self.pretrained = None
        else:
            raise TypeError(f"pretrained must be a checkpoint folder or a torch model, got {type(pretrained).__name__}")
        self.model.eval()
        self._cache_arg = _cache_argument(self.model)
        if str(cuda_graph).strip().lower() == "auto":
            graphs = None
        elif str(cuda_graph).strip().lower() in ("true", "1", "yes", "false", "0", "no"):
            graphs = parse_bool("cuda_graph", cuda_graph)
        else:
            raise ValueError(
                f"model arg cuda_graph must be auto, true or false, got {cuda_graph!r}; e.g. cuda_graph=false"
            )
        self._decoder = GreedyDecoder(self.model, cuda_graph=graphs)
        self._max_length = self._check_max_length(max_length)
        self.tokenizer = _load_tokenizer(tokenizer, pretrained)
        self.stop_token_ids = eos_token_ids(
            self.tokenizer, self.model.config, self.pretrained, getattr(self.model, "generation_config", None)
        )
        if self.tokenizer.eos_token_id is None and self.tokenizer.bos_token_id is None:
            log.warning(
                "the tokenizer has no eos/bos token: empty contexts are prefixed with token 0 and "
                "generation stops only at the task's stop strings or its token budget"
            )
        self.stats = ReuseStats()
        self.events: Dict[str, int] = defaultdict(int)
        self.truncated: Dict[str, dict] = {}  # task -> {"prompts", "tokens_dropped"} under truncation=left
        self._request_tasks: List[Optional[str]] = []  # task of each loglikelihood request being scored
        self._uses_qdelta_cache: Optional[bool] = None

    def _check_max_length(self, max_length) -> Optional[int]:
        model_limit = getattr(self.model.config, "max_sequence_length", None)
        if max_length is None or str(max_length).strip().lower() in ("", "none"):
            return model_limit
        try:
            limit = int(max_length)
        except ValueError:
            raise ValueError(
                f"max_length must be a number of tokens, got {max_length!r}; e.g. max_length=2048"
            ) from None
        if limit < 2:
            raise ValueError(f"max_length must be >= 2 tokens, got {limit}; e.g. max_length=2048")
        if model_limit is not None and limit > model_limit:
            raise ValueError(
                f"max_length={limit} exceeds the model's max_sequence_length {model_limit}; pass at most {model_limit}"
            )
        return limit

    # ---------------------------------------------------------------- lm-eval properties
    @property
    def eot_token_id(self) -> Optional[int]:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        for token in (self.tokenizer.bos_token_id, self.tokenizer.eos_token_id):
            if token is not None:
                return token
        return 0

    @property
    def max_length(self) -> Optional[int]:
        """The ``max_length`` model arg, else ``config.max_sequence_length`` (None for recurrent models)."""
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.name_or_path).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> List[int]:
        special = self.add_bos_token if add_special_tokens is None else bool(add_special_tokens)
        return list(self.tokenizer.encode(string, add_special_tokens=special))

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

    # ---------------------------------------------------------------- data parallel
    def all_gather(self, tensor):
        return tensor if self.accelerator is None else self.accelerator.gather(tensor)

    def gather_object(self, obj, dst=0):
        if self.accelerator is None:
            return [obj]
        result = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return align_metric_keys(result) if result is not None else None

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    # ---------------------------------------------------------------- model calls
    def _forward(self, input_ids: torch.Tensor, past=None, use_cache: bool = False):
        with torch.inference_mode():
            kw = {self._cache_arg: past, "use_cache": use_cache or past is not None}
            out = self.model(input_ids=input_ids, **kw)
        return out.logits, getattr(out, self._cache_arg, None)

    def _forward_masked(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, past=None):
        """Right-padded rows with their mask (covering past + new tokens), continuing ``past``."""
        with torch.inference_mode():
            kw = {self._cache_arg: past, "use_cache": True}
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kw)
        return out.logits, getattr(out, self._cache_arg)

    def _tree_forward(self):
        """Level-batched prefix walks need our recurrent cache (``select`` + per-row token counts);
        the Transformer's KV cache and other caches take the one-chain-at-a-time walk (None)."""
        if self._uses_qdelta_cache is None and getattr(self.model.config, "max_sequence_length", None) is not None:
            self._uses_qdelta_cache = False
        if self._uses_qdelta_cache is None:
            from qdelta.cache import QDeltaCache

            probe = torch.tensor([[self.prefix_token_id]], dtype=torch.long, device=self._device)
            self._uses_qdelta_cache = isinstance(self._forward(probe, None, True)[1], QDeltaCache)
        return self._forward_masked if self._uses_qdelta_cache else None

    def _over_limit(self, n_tokens: int, what: str, task: Optional[str]) -> bool:
        """False when ``n_tokens`` fits; over the limit: raises (on_overflow=error) or counts and
        returns True (on_overflow=count)."""
        limit = self.max_length
        if limit is None or n_tokens <= limit:
            return False
        if self.on_overflow == "error":
            raise ValueError(
                f"task {task or '?'}: a {what} request needs {n_tokens} tokens but max_length is {limit}; pass "
                "truncation=left in --model_args (lm-eval's left truncation, counted) or on_overflow=count "
                "(scored wrong, counted), or evaluate shorter task settings"
            )
        self.events[f"{what}_over_max_length"] += 1
        return True

    def _truncate_left(self, tokens: List[int], keep: int, task: Optional[str]) -> List[int]:
        """The last ``keep`` tokens; counts the prompt and the tokens dropped for ``task``."""
        counts = self.truncated.setdefault(task or "?", {"prompts": 0, "tokens_dropped": 0})
        counts["prompts"] += 1
        counts["tokens_dropped"] += len(tokens) - keep
        return tokens[-keep:]

    def _fit_loglikelihood(self, ctx: List[int], cont: List[int], task: Optional[str]) -> Optional[List[int]]:
        """The context to score with (left-truncated under truncation=left), or None: counted overflow."""
        limit, need = self.max_length, len(ctx) + len(cont) - 1
        if limit is None or need <= limit:
            return ctx
        if self.truncation == "left":  # HFLM: (ctx + cont)[-(limit + 1):][:-1]
            room = limit + 1 - len(cont)
            if room < 1:
                raise ValueError(
                    f"task {task or '?'}: a loglikelihood continuation of {len(cont)} tokens does not fit max_length "
                    f"{limit} even without its context (truncation=left cuts contexts only); raise max_length"
                )
            return self._truncate_left(ctx, room, task)
        return None if self._over_limit(need, "loglikelihood", task) else ctx

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> List[Tuple[float, bool]]:
        """lm-eval's encoding (``TemplateLM.loglikelihood``), keeping each request's task for errors and counts."""
        self._request_tasks = [getattr(req, "task_name", None) for req in requests]
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._request_tasks = []

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> List[Tuple[float, bool]]:
        results: List[Optional[Tuple[float, bool]]] = [None] * len(requests)
        keep, items = [], []
        for i, (_, ctx, cont) in enumerate(requests):
            task = self._request_tasks[i] if i < len(self._request_tasks) else None
            fitted = self._fit_loglikelihood(ctx, cont, task)
            if fitted is None:
                results[i] = (float("-inf"), False)
            else:
                keep.append(i)
                items.append((fitted, cont))
        scored = score_requests(
            self._forward,
            items,
            self.batch_size,
            self.prefix_token_id,
            self._device,
            self.prefix_reuse,
            self.prefix_min_fraction,
            self.stats,
            forward_masked=self._tree_forward() if self.prefix_reuse else None,
        )
        for i, answer in zip(keep, scored):
            results[i] = answer
        for (request_str, _, _), answer in zip(requests, results):
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
        self._log_events()
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        """Whole-document log-likelihood; one window for models without a length limit."""
        windows, owner = [], []
        for r, (string,) in enumerate(req.args for req in requests):
            tokens = self.tok_encode(string)
            max_len = self.max_length or (len(tokens) + 1)
            for window in get_rolling_token_windows(tokens, self.prefix_token_id, max_len, 1):
                windows.append(make_disjoint_window(window))
                owner.append(r)
        scored = score_requests(
            self._forward,
            windows,
            self.batch_size,
            self.prefix_token_id,
            self._device,
            prefix_reuse=False,
            stats=self.stats,
        )
        totals = [0.0] * len(requests)
        for r, (logprob, _) in zip(owner, scored):
            totals[r] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        """Greedy generation: one prefill per batch (shared prefixes once), then cached decoding.

        A batch holds contexts of equal token length, so no padding enters the model.
        """
        out: List[Optional[str]] = [None] * len(requests)
        buckets: Dict[Tuple[str, int], List[int]] = defaultdict(list)
        encoded = []
        for i, (context, gen_kwargs) in enumerate(req.args for req in requests):
            ctx = self.tok_encode(context) or [self.prefix_token_id]
            encoded.append(ctx)
            buckets[(json.dumps(gen_kwargs, sort_keys=True, default=str), len(ctx))].append(i)
        eos = self.eot_token_id
        eos_text = None if eos is None else self.tokenizer.decode([eos], skip_special_tokens=False)
        limit = self.max_length
        for (_, length), members in buckets.items():
            task = getattr(requests[members[0]], "task_name", None)
            until, budget = greedy_settings(requests[members[0]].args[1], self.max_gen_toks, task)
            until = handle_stop_sequences(until, eos=eos_text)
            if limit is not None and self.truncation == "left":  # HFLM: the context keeps limit - budget
                room = limit - budget
                if room < 1:
                    raise ValueError(
                        f"task {task or '?'}: max_gen_toks={budget} leaves no room for a context within max_length "
                        f"{limit} (truncation=left keeps max_length - max_gen_toks); lower max_gen_toks or raise max_length"
                    )
                if length > room:
                    for i in members:
                        encoded[i] = self._truncate_left(encoded[i], room, task)
                    length = room
            elif self._over_limit(length, "generate_until", task):
                for i in members:
                    out[i] = ""
                continue
            elif limit is not None and length + budget > limit:
                budget = limit - length
                self.events["generation_capped_at_max_length"] += len(members)
            if self.prefix_reuse:
                groups = [
                    g.members for g in plan_prefix_groups([encoded[i] for i in members], self.prefix_min_fraction)
                ]
                shared = [[members[j] for j in g] for g in groups if len(g) > 1]
                singles = [[members[g[0]] for g in groups if len(g) == 1]]
            else:
                shared, singles = [], [members]
            for batch_source in shared + singles:
                for start in range(0, len(batch_source), self.batch_size):
                    batch = batch_source[start : start + self.batch_size]
                    texts = self._generate_batch([encoded[i] for i in batch], budget, until)
                    for i, text in zip(batch, texts):
                        out[i] = text
                        self.cache_hook.add_partial("generate_until", requests[i].args, text)
        self._log_events()
        return out

    def _generate_batch(self, contexts: List[List[int]], budget: int, until: List[str]) -> List[str]:
        """contexts: B token lists of one length L -> B generated strings (stop strings removed)."""
        B, L = len(contexts), len(contexts[0])
        shared = L
        for ctx in contexts[1:]:
            shared = min(shared, common_prefix_len(contexts[0], ctx))
        ids = torch.tensor(contexts, dtype=torch.long, device=self._device)
        if B > 1 and self.prefix_reuse and shared >= 1 and shared >= self.prefix_min_fraction * L:
            logits, cache = self._forward(ids[:1, :shared], None, True)
            cache = repeat_cache(cache, B)
            self.stats.tokens_saved += shared * (B - 1)
            if shared < L:
                logits, cache = self._forward(ids[:, shared:], cache, True)
            last = logits[:, -1].expand(B, -1)
        else:
            logits, cache = self._forward(ids, None, True)
            last = logits[:, -1]
        generated: List[List[int]] = [[] for _ in range(B)]
        done = [False] * B
        first = last.argmax(-1, keepdim=True)  # (B, 1)
        for block in self._decoder.continue_from(cache, first, budget, block=DECODE_BLOCK):
            for b, tokens in enumerate(block.tolist()):  # one read of the device per block
                for token in tokens:
                    if done[b]:
                        break
                    generated[b].append(token)
                    # an end token is kept, as in HFLM: decoding drops it if it is a special token
                    done[b] = token in self.stop_token_ids or any(
                        stop and stop in self.tok_decode(generated[b]) for stop in until
                    )
            if all(done):
                break
        return [postprocess_generated_text(self.tok_decode(g), until, None) for g in generated]

    # ---------------------------------------------------------------- reporting
    def _log_events(self) -> None:
        for name, count in sorted(self.events.items()):
            log.warning("qdelta: %d request(s) %s (on_overflow=%s)", count, name.replace("_", " "), self.on_overflow)
        for task, counts in sorted(self.truncated.items()):
            log.warning(
                "qdelta: task %s: %d prompt(s) so far left-truncated to max_length %s, %d tokens dropped (truncation=left)",
                task,
                counts["prompts"],
                self.max_length,
                counts["tokens_dropped"],
            )

    def take_stats(self) -> dict:
        """Prefix-reuse savings, overflow events and left truncations per task since the last call
        (then reset): ``{..., "events": {name: n}, "truncated": {task: {"prompts", "tokens_dropped"}}}``."""
        info = {**self.stats.as_dict(), "events": dict(self.events), "truncated": dict(self.truncated)}
        self.stats, self.events, self.truncated = ReuseStats(), defaultdict(int), {}
        return info

    def state_size(self) -> dict:
        """Cached state elements per sequence: ``fixed + per_token * T`` (measured at T = 8, 16)."""
        sizes = []
        for length in (8, 16):
            ids = torch.full((1, length), self.prefix_token_id, dtype=torch.long, device=self._device)
            _, cache = self._forward(ids, None, True)
            sizes.append(_cache_floats(cache))
        per_token = (sizes[1] - sizes[0]) / 8
        return {"fixed": int(sizes[0] - 8 * per_token), "per_token": per_token}

    def get_model_info(self) -> dict:
        config = self.model.config
        return {
            "model_type": getattr(config, "model_type", type(self.model).__name__),
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(next(self.model.parameters()).dtype),
            "pretrained": self.pretrained,
            "prefix_reuse": self.prefix_reuse,
            "on_overflow": self.on_overflow,
            "truncation": self.truncation,
            "max_sequence_length": getattr(config, "max_sequence_length", None),
            "max_length": self.max_length,
            "stop_token_ids": list(self.stop_token_ids),
        }


if "qdelta" not in model_registry:
    register_model("qdelta")(QDeltaLM)
