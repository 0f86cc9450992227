"""YAML task definitions and the data generators they reference.

``TASKS_DIR`` is the folder to give lm-eval as ``--include_path`` (``recall/`` and ``lm/``
below it). Generators: :mod:`qdelta.tasks.mqar` (token-level MQAR for training and native
evaluation), :mod:`qdelta.tasks.synthetic` and :mod:`qdelta.tasks.needle` (text tasks),
scoring in :mod:`qdelta.tasks.scoring`; ``qdelta.tasks.oracle_models`` registers the
``qd_oracle`` and ``qd_random`` lm-eval models when imported.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent

# lm-eval built-in tasks of the qd_lm group; each downloads its data from the Hugging Face hub.
HUB_TASKS = (
    "wikitext",
    "lambada_openai",
    "piqa",
    "hellaswag",
    "winogrande",
    "arc_easy",
    "arc_challenge",
    "openbookqa",
    "boolq",
)


def offline_note(task_names) -> "str | None":
    """A warning naming the requested hub-backed tasks (``qd_lm`` counts as all of them) when
    ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is on; ``None`` when nothing needs the hub."""
    import os

    offline = any(
        os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    names = set(task_names)
    wanted = sorted((names & set(HUB_TASKS)) | (set(HUB_TASKS) if "qd_lm" in names else set()))
    if not offline or not wanted:
        return None
    return (
        f"{', '.join(wanted)}: lm-eval built-in tasks whose data come from the Hugging Face hub; offline "
        f"they run only from a filled datasets cache (unset HF_HUB_OFFLINE/HF_DATASETS_OFFLINE where the hub "
        f"is reachable). qd_kjv_ruth_ppl and the qd_ recall tasks run offline."
    )


__all__ = ["TASKS_DIR", "HUB_TASKS", "offline_note"]
