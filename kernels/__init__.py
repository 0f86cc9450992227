"""Q-Delta ops: ``naive_recurrent_qdelta`` (the spec), ``chunk_qdelta``, ``fused_recurrent_qdelta``.

All three share one signature and one meaning (DESIGN §2); see each function's docstring.
"""

from ._inputs import l2norm
from .chunk import chunk_qdelta
from .fused_recurrent import fused_recurrent_qdelta
from .naive import naive_recurrent_qdelta
from .state import OfficialState

__all__ = ["l2norm", "chunk_qdelta", "fused_recurrent_qdelta", "naive_recurrent_qdelta", "OfficialState"]
