"""qdelta: the reference implementation of Q-Delta and a long-context recall harness.

Importing the package registers every model type with ``transformers``' ``AutoConfig``,
``AutoModel`` and ``AutoModelForCausalLM``: "qdelta", "gated_deltanet", "delta_net",
"linear_attn", "transformer".

The ``qdelta`` command defers that import (torch and transformers take seconds to load) until a
subcommand runs, so ``qdelta --help`` answers at once: when the process is the ``qdelta`` console
script (or ``QDELTA_LAZY_IMPORT=1``), the names below load on first use or on :func:`load`.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "load_model",
    "QDeltaCache",
    "QDeltaConfig",
    "QDeltaModel",
    "QDeltaForCausalLM",
    "GatedDeltaNetConfig",
    "GatedDeltaNetModel",
    "GatedDeltaNetForCausalLM",
    "DeltaNetConfig",
    "DeltaNetModel",
    "DeltaNetForCausalLM",
    "LinearAttentionConfig",
    "LinearAttentionModel",
    "LinearAttentionForCausalLM",
    "TransformerConfig",
    "TransformerModel",
    "TransformerForCausalLM",
]


def load():
    """Import the models and register them with ``transformers`` (once); returns the API module."""
    from . import _api

    globals().update({name: getattr(_api, name) for name in __all__ if name != "__version__"})
    return _api


def _deferred() -> bool:
    return _os.environ.get("QDELTA_LAZY_IMPORT") == "1" or _os.path.basename(_sys.argv[0] or "") == "qdelta"


if _deferred():

    def __getattr__(name):
        if name in __all__:
            return getattr(load(), name)
        raise AttributeError(f"module 'qdelta' has no attribute {name!r}")

else:
    load()
