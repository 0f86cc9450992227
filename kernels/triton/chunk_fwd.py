"""Triton chunkwise Q-Delta (DESIGN §2, "Chunkwise form"): the three forward kernels.

Per chunk of C tokens from state S0 (``G`` the in-chunk cumulative gate, ``gam = exp(G)``,
``Gam_ij = exp(G_i - G_j)``)::

    X  = K + diag(lam) Q
    L  = strictly_lower( diag(beta) (X K^T) * Gam )      paper    (official: K X^T)
    T  = (I + L)^-1 ;  W = T diag(beta gam) X ;  U = T diag(beta) V          (1) _intra_kernel
    U' = U - W S0 ;    S_C = gam_C S0 + K^T diag(gam_C / gam) U'             (2) _state_kernel
    O  = scale ( diag(gam) Q S0 + ((Q K^T) * Gam * lower_incl) U' )          (3) _output_kernel
The backward is in :mod:`.chunk_bwd`.

Chunks come from a host-built table (first token, length), so packed sequences
(``cu_seqlens``) and the official variant's chunking from every sequence start need no special
case; tokens past a chunk's length are masked to zero. The official variant is computed here
only from chunk boundaries (its in-chunk continuation is handled by the caller).

Precision: gate cumsum, T, U, U', Aqk and the running state are fp32 (W and the kept chunk-start
states can be stored in the inputs' 16-bit dtype where their readers round them anyway: launch.py
W_LOWP, H_LOWP); ``tl.dot`` on fp32 operands runs at ``DOT_PRECISION`` ("tf32" on Hopper tensor cores,
or "ieee" fp32, the caller's ``precision``), except the two dots that assemble T, always "ieee".
Plain pointer arithmetic with masks throughout: Triton 3.9 removed ``tl.make_block_ptr``. Checked
with Triton 3.9 (TRITON_INTERPRET=1, CPU) and Triton 3.6 on an H200 (torch 2.11;
tests/kernels/test_triton_gpu.py, see NOTES.md); not yet run on an H100.
Limits: K <= 256, V <= 512 (any size, padded to powers of two inside), chunk size <= 64.
The state passes hold all of K in one block. With 16-bit operands the forward pass's K-wide loads (W,
K^T) go to the dots untouched, so Triton copies them straight to shared memory, two pipeline stages
ahead, also at K = 256 (197 KB).
No ``tl.trans`` of a dot result anywhere (the Triton 3.4-3.7.0 Hopper miscompile, DESIGN §5).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def dot(a, b, like, LOWP: tl.constexpr, PRECISION: tl.constexpr):
    """``a @ b`` with fp32 accumulation; with LOWP both operands are first rounded to the element type
    of the pointer ``like`` (the inputs' dtype: bf16/fp16 operands run at the full tensor-core rate;
    for fp32 inputs nothing changes), else both are taken as fp32. Operands loaded in the 16-bit dtype
    can be passed as loaded: with LOWP they then reach the dot untouched, which keeps them out of fp32
    registers. ``PRECISION`` ("tf32" or "ieee") is the dot's ``input_precision`` for fp32 operands."""
    if LOWP:
        return tl.dot(a.to(like.dtype.element_ty), b.to(like.dtype.element_ty), input_precision=PRECISION)
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)


@triton.jit
def dot_add(acc, a, b, like, LOWP: tl.constexpr, PRECISION: tl.constexpr):
    """``acc + a @ b`` as one accumulating dot (operands as in :func:`dot`): the product lands in ``acc``'s
    registers instead of a second accumulator of the same size."""
    if LOWP:
        return tl.dot(a.to(like.dtype.element_ty), b.to(like.dtype.element_ty), acc, input_precision=PRECISION)
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PRECISION)


@triton.jit
def chunk_rows(chunk_bos, chunk_len, i_c, i_h, H: tl.constexpr, BC: tl.constexpr):
    """Chunk ``i_c`` of the table: first token, length, in-chunk positions, their mask, and the
    token-head row index ``(token) * H + head`` of each position."""
    bos = tl.load(chunk_bos + i_c).to(tl.int64)
    n = tl.load(chunk_len + i_c)
    o_c = tl.arange(0, BC)
    m_c = o_c < n
    return bos, n, o_c, m_c, (bos + o_c) * H + i_h


@triton.jit
def row_values(x, o_t, m_c, PRESENT: tl.constexpr, BC: tl.constexpr):
    """A per-token scalar (beta, lam, ...) of the chunk's rows as fp32; zeros where ``PRESENT`` is off."""
    if PRESENT:
        return tl.load(x + o_t, mask=m_c, other=0.0).to(tl.float32)
    else:
        return tl.zeros([BC], dtype=tl.float32)


@triton.jit
def half_qk_tiles(q, k, t_1, t_2, m_1, m_2, i_k, K: tl.constexpr, BK: tl.constexpr):
    """The q and k tiles (fp32) of K block ``i_k`` for both halves of a chunk, with their offsets and masks."""
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    p_1, p_2 = t_1[:, None] * K + o_k[None, :], t_2[:, None] * K + o_k[None, :]
    mk_1, mk_2 = m_1[:, None] & m_k[None, :], m_2[:, None] & m_k[None, :]
    b_q1 = tl.load(q + p_1, mask=mk_1, other=0.0).to(tl.float32)
    b_k1 = tl.load(k + p_1, mask=mk_1, other=0.0).to(tl.float32)
    b_q2 = tl.load(q + p_2, mask=mk_2, other=0.0).to(tl.float32)
    b_k2 = tl.load(k + p_2, mask=mk_2, other=0.0).to(tl.float32)
    return b_q1, b_k1, b_q2, b_k2, p_1, p_2, mk_1, mk_2


@triton.jit
def _l2norm_rows_kernel(q, k, R_out, rows, K: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr):
    """``1 / sqrt(sum_k x^2 + 1e-6)`` (fp32; the l2-norm of ``qdelta.kernels.l2norm``) of BR (token, head)
    rows of q and of k: R_out (2, rows), q's first. Every later kernel scales the rows by these."""
    o_r = tl.program_id(0) * BR + tl.arange(0, BR)
    o_k = tl.arange(0, BK)
    m_r = o_r < rows
    m = m_r[:, None] & (o_k < K)[None, :]
    p = o_r.to(tl.int64)[:, None] * K + o_k[None, :]
    b_q = tl.load(q + p, mask=m, other=0.0).to(tl.float32)
    tl.store(R_out + o_r, tl.rsqrt(tl.sum(b_q * b_q, 1) + 1e-6), mask=m_r)
    b_k = tl.load(k + p, mask=m, other=0.0).to(tl.float32)
    tl.store(R_out + rows + o_r, tl.rsqrt(tl.sum(b_k * b_k, 1) + 1e-6), mask=m_r)


@triton.jit
def _intra_kernel(
    q,
    k,
    v,
    g,
    beta,
    lam,  # inputs, (T, H, K) / (T, H, V) / (T, H)
    chunk_bos,
    chunk_len,  # (NC,) int32: first token and length of every chunk
    # out, fp32 unless said: G (T, H), W (T, H, K; 16-bit with W_LOWP), U (T, H, V), T, A and PG (NC, H, BC, BC)
    G_out,
    W_out,
    U_out,
    T_out,
    A_out,
    PG_out,
    Rq,
    Rk,  # with NORM: (T, H) fp32 inverse row norms of q and k
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BC: tl.constexpr,
    HC: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_G: tl.constexpr,
    HAS_LAM: tl.constexpr,
    OFFICIAL: tl.constexpr,
    STORE_T: tl.constexpr,
    NORM: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """With NORM, q and k are taken l2-normalised: the products run on the rows as loaded, with
    ``x = rk (k + (lam rq / rk) q)``, and the row scalings act on the C x C results and on W's
    row factor. Gate cumsum G, ``(Q K^T) * Gam`` (A_out), W and U of one chunk and head; with STORE_T also,
    for the backward, ``T = (I + L)^-1`` (T_out) and the strictly lower ``P * Gam`` (PG_out: ``L`` without
    beta), so that the backward never recomputes the pairing. The chunk is handled as two halves of
    ``HC = max(16, BC / 2)`` rows (for BC = 16 the second half is padding):
    ``T = [[T1, 0], [-T2 L21 T1, T2]]`` with T1, T2 the inverses of the diagonal blocks, both by forward
    substitution in the same HC - 1 steps on HC x HC tiles (a quarter of the elements of one BC x BC
    step), reading L^T so each step takes a row of L with a row-wise reduction; ``L21`` and T1 meet in
    two fp32 ("ieee") dots."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos = tl.load(chunk_bos + i_c).to(tl.int64)
    n = tl.load(chunk_len + i_c)
    o_1 = tl.arange(0, HC)
    o_2 = HC + o_1
    m_1, m_2 = o_1 < n, o_2 < n
    t_1, t_2 = (bos + o_1) * H + i_h, (bos + o_2) * H + i_h
    if HAS_G:
        g_1 = tl.load(g + t_1, mask=m_1, other=0.0).to(tl.float32)
        b_G1 = tl.cumsum(g_1, 0)
        b_G2 = tl.cumsum(tl.load(g + t_2, mask=m_2, other=0.0).to(tl.float32), 0) + tl.sum(g_1, 0)
    else:
        b_G1 = tl.zeros([HC], dtype=tl.float32)
        b_G2 = tl.zeros([HC], dtype=tl.float32)
    tl.store(G_out + t_1, b_G1, mask=m_1)
    tl.store(G_out + t_2, b_G2, mask=m_2)
    b_beta1, b_beta2 = row_values(beta, t_1, m_1, True, HC), row_values(beta, t_2, m_2, True, HC)
    b_lam1, b_lam2 = row_values(lam, t_1, m_1, HAS_LAM, HC), row_values(lam, t_2, m_2, HAS_LAM, HC)
    if NORM:
        rq1, rq2 = row_values(Rq, t_1, m_1, True, HC), row_values(Rq, t_2, m_2, True, HC)
        rk1, rk2 = row_values(Rk, t_1, m_1, True, HC), row_values(Rk, t_2, m_2, True, HC)
        b_lam1 = b_lam1 * rq1 / tl.where(m_1, rk1, 1.0)  # x / rk = k + (lam rq / rk) q
        b_lam2 = b_lam2 * rq2 / tl.where(m_2, rk2, 1.0)

    # pairing P (paper <x_i, k_j>, official <k_i, x_j>): the diagonal blocks transposed, P21 as is; Q K^T
    b_P11t = tl.zeros([HC, HC], dtype=tl.float32)
    b_P22t = tl.zeros([HC, HC], dtype=tl.float32)
    b_P21 = tl.zeros([HC, HC], dtype=tl.float32)
    b_QK11 = tl.zeros([HC, HC], dtype=tl.float32)
    b_QK21 = tl.zeros([HC, HC], dtype=tl.float32)
    b_QK22 = tl.zeros([HC, HC], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        b_q1, b_k1, b_q2, b_k2, p_1, p_2, mk_1, mk_2 = half_qk_tiles(q, k, t_1, t_2, m_1, m_2, i_k, K, BK)
        b_x1, b_x2 = b_k1 + b_lam1[:, None] * b_q1, b_k2 + b_lam2[:, None] * b_q2
        b_QK11 += tl.dot(b_q1, tl.trans(b_k1), input_precision=DOT_PRECISION)
        b_QK21 += tl.dot(b_q2, tl.trans(b_k1), input_precision=DOT_PRECISION)
        b_QK22 += tl.dot(b_q2, tl.trans(b_k2), input_precision=DOT_PRECISION)
        if OFFICIAL:
            b_P11t += tl.dot(b_x1, tl.trans(b_k1), input_precision=DOT_PRECISION)
            b_P22t += tl.dot(b_x2, tl.trans(b_k2), input_precision=DOT_PRECISION)
            b_P21 += tl.dot(b_k2, tl.trans(b_x1), input_precision=DOT_PRECISION)
        else:
            b_P11t += tl.dot(b_k1, tl.trans(b_x1), input_precision=DOT_PRECISION)
            b_P22t += tl.dot(b_k2, tl.trans(b_x2), input_precision=DOT_PRECISION)
            b_P21 += tl.dot(b_x2, tl.trans(b_k1), input_precision=DOT_PRECISION)
    if NORM:  # the raw rows' products to the normalised rows' (P: both factors are k's, up to x / rk)
        b_QK11 *= rq1[:, None] * rk1[None, :]
        b_QK21 *= rq2[:, None] * rk1[None, :]
        b_QK22 *= rq2[:, None] * rk2[None, :]
        b_P11t *= rk1[:, None] * rk1[None, :]
        b_P22t *= rk2[:, None] * rk2[None, :]
        b_P21 *= rk2[:, None] * rk1[None, :]
    # L^T of the diagonal blocks: element (j, i) = beta_i P_ij exp(G_i - G_j) for j < i
    lower_t1 = (o_1[:, None] < o_1[None, :]) & m_1[:, None] & m_1[None, :]
    lower_t2 = (o_1[:, None] < o_1[None, :]) & m_2[:, None] & m_2[None, :]
    b_L11t = b_beta1[None, :] * b_P11t * tl.exp(tl.where(lower_t1, b_G1[None, :] - b_G1[:, None], float("-inf")))
    b_L22t = b_beta2[None, :] * b_P22t * tl.exp(tl.where(lower_t2, b_G2[None, :] - b_G2[:, None], float("-inf")))
    m_21 = m_2[:, None] & m_1[None, :]
    b_Gam21 = tl.exp(tl.where(m_21, b_G2[:, None] - b_G1[None, :], float("-inf")))
    b_L21 = b_beta2[:, None] * b_P21 * b_Gam21
    incl_1 = (o_1[:, None] >= o_1[None, :]) & m_1[:, None] & m_1[None, :]
    incl_2 = (o_1[:, None] >= o_1[None, :]) & m_2[:, None] & m_2[None, :]
    b_QK11 *= tl.exp(tl.where(incl_1, b_G1[:, None] - b_G1[None, :], float("-inf")))
    b_QK22 *= tl.exp(tl.where(incl_2, b_G2[:, None] - b_G2[None, :], float("-inf")))
    b_QK21 *= b_Gam21
    # (Q K^T) * Gam, causal incl. the diagonal, as one BC x BC tile per chunk (upper block zero)
    p_cc = (tl.cast(i_c, tl.int64) * H + i_h) * BC * BC
    in_2 = o_2 < BC  # the second half exists (BC > 16)
    tl.store(A_out + p_cc + o_1[:, None] * BC + o_1[None, :], b_QK11.to(A_out.dtype.element_ty))
    tl.store(A_out + p_cc + o_2[:, None] * BC + o_1[None, :], b_QK21.to(A_out.dtype.element_ty), mask=in_2[:, None])
    tl.store(
        A_out + p_cc + o_2[:, None] * BC + o_2[None, :],
        b_QK22.to(A_out.dtype.element_ty),
        mask=in_2[:, None] & in_2[None, :],
    )
    tl.store(
        A_out + p_cc + o_1[:, None] * BC + o_2[None, :],
        tl.zeros([HC, HC], dtype=A_out.dtype.element_ty),
        mask=in_2[None, :],
    )
    if STORE_T:  # P * Gam, strictly lower (the diagonal blocks written back from their transposed tiles)
        b_PG11t = b_P11t * tl.exp(tl.where(lower_t1, b_G1[None, :] - b_G1[:, None], float("-inf")))
        b_PG22t = b_P22t * tl.exp(tl.where(lower_t2, b_G2[None, :] - b_G2[:, None], float("-inf")))
        tl.store(PG_out + p_cc + o_1[None, :] * BC + o_1[:, None], b_PG11t)
        tl.store(PG_out + p_cc + o_2[:, None] * BC + o_1[None, :], b_P21 * b_Gam21, mask=in_2[:, None])
        tl.store(PG_out + p_cc + o_2[None, :] * BC + o_2[:, None], b_PG22t, mask=in_2[None, :] & in_2[:, None])
        tl.store(
            PG_out + p_cc + o_1[:, None] * BC + o_2[None, :], tl.zeros([HC, HC], dtype=tl.float32), mask=in_2[None, :]
        )

    # T1, T2 by forward substitution, both halves per step: row_i(T) = e_i - sum_{j<i} L_ij row_j(T)
    b_T1 = tl.where(o_1[:, None] == o_1[None, :], 1.0, 0.0)
    b_T2 = tl.where(o_1[:, None] == o_1[None, :], 1.0, 0.0)
    for i in range(1, HC):
        l_1 = tl.sum(tl.where(o_1[None, :] == i, b_L11t, 0.0), 1)  # L11[i, :], laid out along j
        l_2 = tl.sum(tl.where(o_1[None, :] == i, b_L22t, 0.0), 1)
        r_1 = tl.sum(l_1[:, None] * b_T1, 0)
        r_2 = tl.sum(l_2[:, None] * b_T2, 0)
        b_T1 = tl.where(o_1[:, None] == i, b_T1 - r_1[None, :], b_T1)
        b_T2 = tl.where(o_1[:, None] == i, b_T2 - r_2[None, :], b_T2)
    b_T21 = -tl.dot(tl.dot(b_T2, b_L21, input_precision="ieee"), b_T1, input_precision="ieee")
    if STORE_T:  # for the backward (kernels/triton/chunk_bwd.py)
        tl.store(T_out + p_cc + o_1[:, None] * BC + o_1[None, :], b_T1)
        tl.store(T_out + p_cc + o_2[:, None] * BC + o_1[None, :], b_T21, mask=in_2[:, None])
        tl.store(T_out + p_cc + o_2[:, None] * BC + o_2[None, :], b_T2, mask=in_2[:, None] & in_2[None, :])
        tl.store(
            T_out + p_cc + o_1[:, None] * BC + o_2[None, :], tl.zeros([HC, HC], dtype=tl.float32), mask=in_2[None, :]
        )

    # W = T diag(beta gam) X and U = T diag(beta) V, by halves
    b_wx1, b_wx2 = b_beta1 * tl.exp(b_G1), b_beta2 * tl.exp(b_G2)
    if NORM:
        b_wx1, b_wx2 = b_wx1 * rk1, b_wx2 * rk2
    for i_k in range(tl.cdiv(K, BK)):
        b_q1, b_k1, b_q2, b_k2, p_1, p_2, mk_1, mk_2 = half_qk_tiles(q, k, t_1, t_2, m_1, m_2, i_k, K, BK)
        b_x1 = (b_k1 + b_lam1[:, None] * b_q1) * b_wx1[:, None]
        b_x2 = (b_k2 + b_lam2[:, None] * b_q2) * b_wx2[:, None]
        tl.store(W_out + p_1, tl.dot(b_T1, b_x1, input_precision=DOT_PRECISION).to(W_out.dtype.element_ty), mask=mk_1)
        tl.store(
            W_out + p_2,
            (tl.dot(b_T21, b_x1, input_precision=DOT_PRECISION) + tl.dot(b_T2, b_x2, input_precision=DOT_PRECISION)).to(
                W_out.dtype.element_ty
            ),
            mask=mk_2,
        )
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        p_1, p_2 = t_1[:, None] * V + o_v[None, :], t_2[:, None] * V + o_v[None, :]
        mv_1, mv_2 = m_1[:, None] & m_v[None, :], m_2[:, None] & m_v[None, :]
        b_v1 = tl.load(v + p_1, mask=mv_1, other=0.0).to(tl.float32) * b_beta1[:, None]
        b_v2 = tl.load(v + p_2, mask=mv_2, other=0.0).to(tl.float32) * b_beta2[:, None]
        tl.store(U_out + p_1, tl.dot(b_T1, b_v1, input_precision=DOT_PRECISION), mask=mv_1)
        tl.store(
            U_out + p_2,
            tl.dot(b_T21, b_v1, input_precision=DOT_PRECISION) + tl.dot(b_T2, b_v2, input_precision=DOT_PRECISION),
            mask=mv_2,
        )


@triton.jit
def _state_kernel(
    k,
    W,
    U,
    G,
    h0,  # (T, H, K), (T, H, K) fp32 or 16-bit, (T, H, V) fp32, (T, H) fp32, (N, H, K, V) fp32
    chunk_bos,
    chunk_len,
    seq_chunks,  # (NC,), (NC,), (N + 1,) int32
    # (NC, H, K, V) chunk-start states (fp32, or 16-bit: H_LOWP), (T, H, V) fp32 U', (N, H, K, V) fp32
    h_out,
    Up_out,
    ht_out,
    Rk,  # with NORM: (T, H) fp32 inverse row norms of k
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_H0: tl.constexpr,
    LOWP: tl.constexpr,
    NORM: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """State pass: chunk-start states h, U' and the final states. With NORM the rows of k are
    l2-normalised by scaling the C-row side of their products."""
    i_v, i_n, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_k = tl.arange(0, BK)  # BK covers all of K
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = i_h * K * V + o_k[:, None] * V + o_v[None, :]  # within one (N or NC, H) slice
    if HAS_H0:
        b_S = tl.load(h0 + i_n.to(tl.int64) * H * K * V + p_kv, mask=m_kv, other=0.0).to(tl.float32)
    else:
        b_S = tl.zeros([BK, BV], dtype=tl.float32)
    c_begin = tl.load(seq_chunks + i_n)
    c_end = tl.load(seq_chunks + i_n + 1)
    for i_c in range(c_begin, c_end):
        tl.store(h_out + tl.cast(i_c, tl.int64) * H * K * V + p_kv, b_S.to(h_out.dtype.element_ty), mask=m_kv)
        bos, n, o_c, m_c, o_t = chunk_rows(chunk_bos, chunk_len, i_c, i_h, H, BC)
        b_W = tl.load(W + o_t[:, None] * K + o_k[None, :], mask=m_c[:, None] & m_k[None, :], other=0.0)
        p_u = o_t[:, None] * V + o_v[None, :]
        m_u = m_c[:, None] & m_v[None, :]
        b_U = tl.load(U + p_u, mask=m_u, other=0.0) - dot(b_W, b_S, k, LOWP, DOT_PRECISION)
        tl.store(Up_out + p_u, b_U, mask=m_u)
        b_G = tl.load(G + o_t, mask=m_c, other=0.0)
        G_last = tl.load(G + (bos + n - 1) * H + i_h)
        # K^T loaded transposed (no tl.trans of a dot result: see the Hopper hazard in NOTES.md) and used as
        # loaded; the decay exp(G_C - G_i) scales the rows of U' instead (C x BV, not K x C elements)
        b_kt = tl.load(k + o_t[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_c[None, :], other=0.0)
        b_e = tl.where(m_c, tl.exp(G_last - b_G), 0.0)
        if NORM:
            b_e *= tl.load(Rk + o_t, mask=m_c, other=0.0)
        b_Ue = b_U * b_e[:, None]
        b_S = b_S * tl.exp(G_last) + dot(b_kt, b_Ue, k, LOWP, DOT_PRECISION)
    tl.store(ht_out + i_n.to(tl.int64) * H * K * V + p_kv, b_S, mask=m_kv)


@triton.jit
def _output_kernel(
    # (T, H, K), (NC, H, BC, BC) fp32, (T, H) fp32, (NC, H, K, V) fp32 or 16-bit, (T, H, V) fp32, (T, H, V)
    q,
    A,
    G,
    h,
    Up,
    o,
    chunk_bos,
    chunk_len,
    Rq,  # with NORM: (T, H) fp32 inverse row norms of q
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    LOWP: tl.constexpr,
    NORM: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, n, o_c, m_c, o_t = chunk_rows(chunk_bos, chunk_len, i_c, i_h, H, BC)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    b_o = tl.zeros([BC, BV], dtype=tl.float32)
    p_h = h + tl.cast(i_c, tl.int64) * H * K * V + i_h * K * V
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_q = tl.load(q + o_t[:, None] * K + o_k[None, :], mask=m_c[:, None] & m_k[None, :], other=0.0)
        b_h = tl.load(p_h + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
        b_o = dot_add(b_o, b_q, b_h, q, LOWP, DOT_PRECISION)
    b_gq = tl.exp(tl.load(G + o_t, mask=m_c, other=0.0))
    if NORM:
        b_gq *= tl.load(Rq + o_t, mask=m_c, other=0.0)
    b_A = tl.load(A + (tl.cast(i_c, tl.int64) * H + i_h) * BC * BC + o_c[:, None] * BC + o_c[None, :])
    p_u = o_t[:, None] * V + o_v[None, :]
    m_u = m_c[:, None] & m_v[None, :]
    b_U = tl.load(Up + p_u, mask=m_u, other=0.0)
    b_o = scale * (b_o * b_gq[:, None] + dot(b_A, b_U, q, LOWP, DOT_PRECISION))
    tl.store(o + p_u, b_o.to(o.dtype.element_ty), mask=m_u)
