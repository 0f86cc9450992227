"""The official variant's final in-chunk state as the Triton path rebuilds it (``_official_final``: the
PyTorch chunk step over each sequence's last chunk, sequences with equal last-chunk lengths batched),
against the fp64 token loop. Runs on the CPU without the interpreter: only the rebuild is under test,
from chunk-start states the token loop computed."""

import pytest
import torch

from qdelta.kernels import naive_recurrent_qdelta
from qdelta.kernels.testing import random_inputs
from qdelta.kernels.triton.chunk import _official_final, chunk_table

LAYOUTS = {
    # last chunks of 6, 11, 6 and 5 tokens: sequences 0 and 2 share a step, the result is put back in order
    "varlen": [0, 70, 81, 151, 156],
    "batch": None,  # three rows of 70 tokens: one step for all
}


@pytest.mark.parametrize("norm", [True, False], ids=["norm", "prenorm"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_rebuilt_final_state_matches_the_token_loop(layout, norm):
    cu = LAYOUTS[layout]
    B, T = (1, cu[-1]) if cu else (3, 70)
    bounds = [(a, b) for a, b in zip(cu, cu[1:])] if cu else [(b * T, (b + 1) * T) for b in range(B)]
    x = random_inputs(B, T, 2, 8, 12, dtype=torch.float64, seed=len(layout) + norm, num_sequences=len(bounds))
    if not norm:
        x["q"], x["k"] = (t / t.norm(dim=-1, keepdim=True) for t in (x["q"], x["k"]))
    state = x.pop("initial_state")
    flat = {n: t.reshape((B * T,) + t.shape[2:]) for n, t in x.items()}
    table = chunk_table(tuple(bounds), 64, "cpu")
    names = ("q", "k", "v", "g", "beta", "lam")

    def official_state(n, start, stop):  # the token loop's state after tokens [start, stop) of sequence n
        rows = (flat[name][None, start:stop] for name in names)
        kw = dict(initial_state=state[n : n + 1], output_final_state=True, use_qk_l2norm=norm, variant="official")
        return naive_recurrent_qdelta(*rows, **kw)[1]

    h_last, ref = [], []
    for n, ((start, end), first) in enumerate(zip(bounds, table.last_bos)):
        h_last.append(state[n] if first == start else official_state(n, start, first).state[0])
        ref.append(official_state(n, start, end))
    f32 = {n: t.float() for n, t in flat.items()}
    scale = 8**-0.5
    got = _official_final(
        f32["q"], f32["k"], f32["v"], f32["g"], f32["beta"], f32["lam"],
        torch.stack(h_last).float(), table, scale, norm,
    )  # fmt: skip
    for i, name in enumerate(("state", "chunk_start", "x_memory")):
        want = torch.cat([r[i] for r in ref])
        err = (got[i].double() - want).norm() / want.norm()
        assert err < 1e-5, f"{name}: relative error {err:.2e}"
    assert got.offset.tolist() == [int(r.offset[0]) for r in ref]
