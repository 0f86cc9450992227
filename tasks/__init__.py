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
HUB_TASKS = ("wikitext", "lambada_openai", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
             "openbookqa", "boolq")

__all__ = ["TASKS_DIR", "HUB_TASKS"]
