"""Triton kernels behind ``chunk_qdelta`` and ``fused_recurrent_qdelta`` (``qdelta.kernels.triton``).

CUDA tensors run here; CPU tensors run here only with ``TRITON_INTERPRET=1`` set before this
package is imported (Triton reads it when the kernels are decorated). See NOTES.md for what was
checked on which GPU and Triton version.
"""

from .chunk import chunk_qdelta_triton, interpret_mode
from .chunk import supports as chunk_supports
from .fused_recurrent import fused_recurrent_qdelta_triton
from .fused_recurrent import supports as recurrent_supports

__all__ = [
    "chunk_qdelta_triton",
    "fused_recurrent_qdelta_triton",
    "chunk_supports",
    "recurrent_supports",
    "interpret_mode",
]
