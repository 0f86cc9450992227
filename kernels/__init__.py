"""Q-Delta ops: ``naive_recurrent_qdelta`` (the spec), ``chunk_qdelta``, ``fused_recurrent_qdelta``.

All three share one signature and one meaning (DESIGN §2); see each function's docstring.
"""


def _hand_over_name() -> bool:
    """Give the name ``kernels`` to the installed distribution of that name, if there is one.

    This folder imports as top-level ``kernels`` only when a checkout's root is on ``sys.path``
    (``python -m`` run from it); it then shadows the ``kernels`` distribution (Hugging Face's,
    which transformers>=5.25 imports). DESIGN §1.
    """
    import importlib.machinery
    import importlib.util
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    elsewhere = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec(__name__, elsewhere)
    if spec is None:
        return False
    sys.modules[__name__] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return True


if __name__ != "kernels" or not _hand_over_name():
    from ._inputs import l2norm
    from .chunk import chunk_qdelta
    from .fused_recurrent import fused_recurrent_qdelta
    from .naive import naive_recurrent_qdelta
    from .state import OfficialState

    __all__ = ["l2norm", "chunk_qdelta", "fused_recurrent_qdelta", "naive_recurrent_qdelta", "OfficialState"]
