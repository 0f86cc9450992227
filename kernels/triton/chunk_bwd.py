"""Backward of the chunkwise Q-Delta op in Triton: one reverse state pass and three per-chunk kernels.

Per chunk (notation of :mod:`.chunk_fwd`; ``R = diag(beta) V - diag(beta gam) X S0`` so that
``U' = T R``; ``e = gam_C / gam``; ``dS_C`` the gradient of the chunk's end state)::

    dU'  = scale Aqk^T dO + diag(e) K dS_C                                   (1) _reverse_state_kernel
    dS0  = gam_C dS_C + scale Q^T diag(gam) dO - W^T dU'   (last chunk first)
    dR   = T^T dU' ;  dL = -strict(dR U'^T) ;  dAqk = scale incl(dO U'^T)      (2) _intra_bwd_kernel
    dV   = diag(beta) dR
    dP   = diag(beta) dL * Gam                 (P = X K^T paper, K X^T official)
    dX   = -diag(beta gam) dR S0^T + dP K      (paper; official: dP^T K)      (3) _kq_bwd_kernel
    dK   = dX + (dAqk * Gam)^T Q + dP^T X (official: dP X) + diag(e) U' dS_C^T
    dQ   = diag(lam) dX + (dAqk * Gam) K + scale diag(gam) dO S0^T
    dlam = rowsum(dX * Q)

``dL = -T^T dT T^T`` with ``dT = dU' R^T`` collapses to ``-dR U'^T``, so neither ``dT`` nor ``W``'s
gradient is ever formed. Gate and beta gradients are row sums of products that the kernels
already hold (e.g. ``d gam_i`` from R is ``-beta_i rowsum(X * dR S0^T)_i``); the in-chunk
cumulative gate's gradient ``dG`` is summed over the K blocks and reverse-cumsummed inside each
chunk by (4) ``_gate_bwd_kernel``. The forward saves G, W, U', ``Aqk = (Q K^T) * Gam``, ``T``, the
chunk-start states ``h`` and ``P * Gam``, so the pairing is never recomputed (and nothing is recomputed in PyTorch).

Transposed operands are loaded transposed through pointer arithmetic (no ``tl.trans`` of a dot
result: the Triton 3.4-3.7.0 Hopper hazard, DESIGN §5). fp32 accumulation and state throughout;
``tl.dot`` of fp32 operands runs at ``DOT_PRECISION`` ("tf32" or "ieee"), as in the forward; with
``LOWP`` (launch.py) the reverse pass and the K-block kernel round their dot operands to the inputs'
16-bit dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk_fwd import chunk_rows, dot, dot_add, row_values
from .launch import launch, settings
from .launch import p2 as _p2


@triton.jit
def _reverse_state_kernel(
    q,
    k,
    W,
    G,
    Aqk,
    do,  # (T, H, K) x2, W (T, H, K) fp32/16-bit, (T, H) fp32, (NC, H, BC, BC) fp32, (T, H, V)
    dht,
    dh_last,  # (N, H, K, V) fp32: gradients of the final states and of each sequence's last chunk start
    chunk_bos,
    chunk_len,
    seq_chunks,
    dS_end,
    dUp,
    dh0,  # out: (NC, H, K, V) fp32 (16-bit: H_LOWP), (T, H, V) fp32, (N, H, K, V) fp32
    Rq,
    Rk,  # with NORM: (T, H) fp32 inverse row norms of q and k
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
    i_v, i_n, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_k = tl.arange(0, BK)  # BK covers all of K
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = i_h * K * V + o_k[:, None] * V + o_v[None, :]
    p_seq = i_n.to(tl.int64) * H * K * V + p_kv
    b_dS = tl.load(dht + p_seq, mask=m_kv, other=0.0)
    c_begin = tl.load(seq_chunks + i_n)
    c_end = tl.load(seq_chunks + i_n + 1)
    for i in range(0, c_end - c_begin):
        i_c = tl.cast(c_end - 1 - i, tl.int64)
        tl.store(dS_end + i_c * H * K * V + p_kv, b_dS.to(dS_end.dtype.element_ty), mask=m_kv)
        bos, n, o_c, m_c, o_t = chunk_rows(chunk_bos, chunk_len, i_c, i_h, H, BC)
        b_G = tl.load(G + o_t, mask=m_c, other=0.0)
        G_last = tl.load(G + (bos + n - 1) * H + i_h)
        m_ck = m_c[:, None] & m_k[None, :]
        m_kc = m_k[:, None] & m_c[None, :]
        p_cv = o_t[:, None] * V + o_v[None, :]
        m_cv = m_c[:, None] & m_v[None, :]
        # the K-wide tiles (k, Q^T, W^T) go to the dots as loaded; row scalings act on the C x BV side
        b_do = tl.load(do + p_cv, mask=m_cv, other=0.0)
        # Aqk^T: element (j, i) = Aqk[i, j], loaded transposed
        b_At = tl.load(Aqk + (i_c * H + i_h) * BC * BC + o_c[None, :] * BC + o_c[:, None])
        b_k = tl.load(k + o_t[:, None] * K + o_k[None, :], mask=m_ck, other=0.0)
        b_e = tl.where(m_c, tl.exp(G_last - b_G), 0.0)
        b_gq = scale * tl.where(m_c, tl.exp(b_G), 0.0)
        if NORM:  # the rows of k and q^T normalised on the C-row side of their products
            b_e *= tl.load(Rk + o_t, mask=m_c, other=0.0)
            b_gq *= tl.load(Rq + o_t, mask=m_c, other=0.0)
        b_dU = scale * dot(b_At, b_do, k, LOWP, DOT_PRECISION) + dot(b_k, b_dS, k, LOWP, DOT_PRECISION) * b_e[:, None]
        tl.store(dUp + p_cv, b_dU, mask=m_cv)
        b_qt = tl.load(q + o_t[None, :] * K + o_k[:, None], mask=m_kc, other=0.0)
        b_dog = b_do.to(tl.float32) * b_gq[:, None]
        b_Wt = tl.load(W + o_t[None, :] * K + o_k[:, None], mask=m_kc, other=0.0)
        b_dS = dot_add(b_dS * tl.exp(G_last), b_qt, b_dog, k, LOWP, DOT_PRECISION)
        b_dS = dot_add(b_dS, b_Wt, -b_dU, k, LOWP, DOT_PRECISION)
        if i == 0:  # the gradient of the last chunk's start state joins here (loaded here: not held in registers)
            b_dS += tl.load(dh_last + p_seq, mask=m_kv, other=0.0)
    tl.store(dh0 + p_seq, b_dS, mask=m_kv)


@triton.jit
def _intra_bwd_kernel(
    v,
    G,
    beta,
    Tinv,
    Up,
    dUp,
    do,  # tokens (T, H, ·); Tinv (NC, H, BC, BC); Up, dUp fp32
    PG,
    Aqk,  # the forward's strictly lower P * Gam and (Q K^T) * Gam, (NC, H, BC, BC) fp32
    chunk_bos,
    chunk_len,
    dR_out,
    dv,
    dP_out,
    dA_out,
    dG_out,
    dbeta_out,  # (T,H,V), (T,H,V), (NC,H,BC,BC) x2 (fp32 or, for a
    # LOWP K-block kernel, 16-bit), (T,H) fp32 x2
    scale,
    H: tl.constexpr,
    V: tl.constexpr,
    BC: tl.constexpr,
    BV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dR, dv, dL, dAqk and the gate / beta parts of one chunk and head. The pairing and ``Q K^T`` are
    read as the forward stored them (``P * Gam`` and ``Aqk = (Q K^T) * Gam``, one C x C tile each)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos, n, o_c, m_c, o_t = chunk_rows(chunk_bos, chunk_len, i_c, i_h, H, BC)
    b_G = tl.load(G + o_t, mask=m_c, other=0.0)
    b_beta = row_values(beta, o_t, m_c, True, BC)
    p_cc = (tl.cast(i_c, tl.int64) * H + i_h) * BC * BC + o_c[:, None] * BC + o_c[None, :]

    b_dLacc = tl.zeros([BC, BC], dtype=tl.float32)  # dR U'^T
    b_dAacc = tl.zeros([BC, BC], dtype=tl.float32)  # dO U'^T
    b_dbeta = tl.zeros([BC], dtype=tl.float32)
    b_Tt = tl.load(Tinv + (tl.cast(i_c, tl.int64) * H + i_h) * BC * BC + o_c[None, :] * BC + o_c[:, None])
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_cv = m_c[:, None] & (o_v < V)[None, :]
        p_cv = o_t[:, None] * V + o_v[None, :]
        b_dR = tl.dot(b_Tt, tl.load(dUp + p_cv, mask=m_cv, other=0.0), input_precision=DOT_PRECISION)
        tl.store(dR_out + p_cv, b_dR.to(dR_out.dtype.element_ty), mask=m_cv)
        b_v = tl.load(v + p_cv, mask=m_cv, other=0.0).to(tl.float32)
        tl.store(dv + p_cv, (b_dR * b_beta[:, None]).to(dv.dtype.element_ty), mask=m_cv)
        b_dbeta += tl.sum(b_dR * b_v, 1)
        m_vc = (o_v < V)[:, None] & m_c[None, :]
        b_Upt = tl.load(Up + o_t[None, :] * V + o_v[:, None], mask=m_vc, other=0.0)
        b_dLacc += tl.dot(b_dR, b_Upt, input_precision=DOT_PRECISION)
        b_do = tl.load(do + p_cv, mask=m_cv, other=0.0).to(tl.float32)
        b_dAacc += tl.dot(b_do, b_Upt, input_precision=DOT_PRECISION)

    m_strict = (o_c[:, None] > o_c[None, :]) & m_c[:, None] & m_c[None, :]
    m_incl = (o_c[:, None] >= o_c[None, :]) & m_c[:, None] & m_c[None, :]
    b_Gam = tl.exp(tl.where(m_incl, b_G[:, None] - b_G[None, :], float("-inf")))
    b_dL = tl.where(m_strict, -b_dLacc, 0.0)
    b_dLPG = b_dL * tl.load(PG + p_cc, mask=m_strict, other=0.0)  # d(L)_ij L_ij / beta_i
    b_dbeta += tl.sum(b_dLPG, 1)
    b_ML = b_dLPG * b_beta[:, None]
    b_dA = tl.where(m_incl, scale * b_dAacc, 0.0)
    b_MA = b_dA * tl.load(Aqk + p_cc, mask=m_incl, other=0.0)
    b_dG = tl.sum(b_ML + b_MA, 1) - tl.sum(b_ML + b_MA, 0)
    tl.store(dP_out + p_cc, (b_dL * b_Gam * b_beta[:, None]).to(dP_out.dtype.element_ty))
    tl.store(dA_out + p_cc, (b_dA * b_Gam).to(dA_out.dtype.element_ty))
    tl.store(dG_out + o_t, b_dG, mask=m_c)
    tl.store(dbeta_out + o_t, b_dbeta, mask=m_c)


@triton.jit
def _kq_bwd_kernel(
    q,
    k,
    G,
    beta,
    lam,
    h,
    dS_end,
    Up,
    dR,
    do,
    dP,
    dA,  # see _intra_bwd_kernel; h, dS_end (NC, H, K, V) fp32/16-bit
    chunk_bos,
    chunk_len,
    dq,
    dk,
    dG_part,
    dbeta_part,
    dlam_part,  # (T,H,K) x2, (NK, T, H) fp32 x3
    sq_part,
    sk_part,  # with NORM: (NK, T, H) fp32 row sums of dq * q and dk * k (normalised q, k)
    Rq,
    Rk,  # with NORM: (T, H) fp32 inverse row norms of q and k
    scale,
    T_total,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_LAM: tl.constexpr,
    OFFICIAL: tl.constexpr,
    LOWP: tl.constexpr,
    NORM: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dq, dk of one chunk, head and K block (with NORM: with respect to the normalised q, k, plus their
    row sums with q, k, which the gate kernel turns into the gradients of the raw q, k) and the parts of
    dG, dbeta, dlam."""
    i_k, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, n, o_c, m_c, o_t = chunk_rows(chunk_bos, chunk_len, i_c, i_h, H, BC)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_ck = m_c[:, None] & m_k[None, :]
    b_G = tl.load(G + o_t, mask=m_c, other=0.0)
    G_last = tl.load(G + (bos + n - 1) * H + i_h)
    b_gam = tl.where(m_c, tl.exp(b_G), 0.0)
    b_e = tl.where(m_c, tl.exp(G_last - b_G), 0.0)
    b_beta = row_values(beta, o_t, m_c, True, BC)
    b_lam = row_values(lam, o_t, m_c, HAS_LAM, BC)

    # the three products with the K x V states: dO S0^T, dR S0^T, U' dS_C^T; and <dS_C, S0>
    b_dOS = tl.zeros([BC, BK], dtype=tl.float32)
    b_dRS = tl.zeros([BC, BK], dtype=tl.float32)
    b_UdS = tl.zeros([BC, BK], dtype=tl.float32)
    b_sdot = tl.zeros([BK], dtype=tl.float32)
    # 64-bit offsets only in the scalar base pointers; the tile offsets are 32-bit (half the registers)
    p_state = tl.cast(i_c, tl.int64) * H * K * V + i_h * K * V
    h_c, dS_c = h + p_state, dS_end + p_state
    p_row = (bos * H + i_h) * V  # the chunk's first (token, head) row of the (T, H, V) tensors
    do_c, dR_c, Up_c = do + p_row, dR + p_row, Up + p_row
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_vk = m_v[:, None] & m_k[None, :]
        p_vk = o_k[None, :] * V + o_v[:, None]  # state^T tile: (BV, BK)
        # tiles go to the dots in their stored dtype (16-bit with LOWP: half the shared memory of fp32)
        b_St = tl.load(h_c + p_vk, mask=m_vk, other=0.0)
        b_dSt = tl.load(dS_c + p_vk, mask=m_vk, other=0.0)
        b_sdot += tl.sum(b_St.to(tl.float32) * b_dSt.to(tl.float32), 0)
        p_cv = o_c[:, None] * (H * V) + o_v[None, :]
        m_cv = m_c[:, None] & m_v[None, :]
        b_dOS = dot_add(b_dOS, tl.load(do_c + p_cv, mask=m_cv, other=0.0), b_St, k, LOWP, DOT_PRECISION)
        b_dRS = dot_add(b_dRS, tl.load(dR_c + p_cv, mask=m_cv, other=0.0), b_St, k, LOWP, DOT_PRECISION)
        b_UdS = dot_add(b_UdS, tl.load(Up_c + p_cv, mask=m_cv, other=0.0), b_dSt, k, LOWP, DOT_PRECISION)

    p_ck = o_t[:, None] * K + o_k[None, :]
    b_q = tl.load(q + p_ck, mask=m_ck, other=0.0).to(tl.float32)
    b_k = tl.load(k + p_ck, mask=m_ck, other=0.0).to(tl.float32)
    if NORM:
        b_q *= tl.load(Rq + o_t, mask=m_c, other=0.0)[:, None]
        b_k *= tl.load(Rk + o_t, mask=m_c, other=0.0)[:, None]
    b_x = b_k + b_lam[:, None] * b_q
    b_dq = b_dOS * (scale * b_gam)[:, None]  # from diag(gam) Q S0
    b_dx = b_dRS * (-b_beta * b_gam)[:, None]  # from R = beta V - beta gam X S0
    b_dk = b_UdS * b_e[:, None]  # from S_C = ... + K^T diag(e) U'
    t_e = tl.sum(b_dk * b_k, 1)  # e_i d(e_i)
    b_dGp = tl.sum(b_dq * b_q, 1) + tl.sum(b_dx * b_x, 1) - t_e
    b_dbeta = -b_gam * tl.sum(b_dRS * b_x, 1)
    b_dGp += tl.where(o_c == n - 1, tl.sum(t_e, 0) + tl.exp(G_last) * tl.sum(b_sdot, 0), 0.0)

    p_cc = (tl.cast(i_c, tl.int64) * H + i_h) * BC * BC
    b_dP = tl.load(dP + p_cc + o_c[:, None] * BC + o_c[None, :])
    b_dPt = tl.load(dP + p_cc + o_c[None, :] * BC + o_c[:, None])
    b_dA = tl.load(dA + p_cc + o_c[:, None] * BC + o_c[None, :])
    b_dAt = tl.load(dA + p_cc + o_c[None, :] * BC + o_c[:, None])
    if OFFICIAL:  # P = K X^T
        b_dk += dot(b_dP, b_x, k, LOWP, DOT_PRECISION)
        b_dx += dot(b_dPt, b_k, k, LOWP, DOT_PRECISION)
    else:  # P = X K^T
        b_dx += dot(b_dP, b_k, k, LOWP, DOT_PRECISION)
        b_dk += dot(b_dPt, b_x, k, LOWP, DOT_PRECISION)
    b_dq += dot(b_dA, b_k, k, LOWP, DOT_PRECISION) + b_lam[:, None] * b_dx
    b_dk += dot(b_dAt, b_q, k, LOWP, DOT_PRECISION) + b_dx
    tl.store(dq + p_ck, b_dq.to(dq.dtype.element_ty), mask=m_ck)
    tl.store(dk + p_ck, b_dk.to(dk.dtype.element_ty), mask=m_ck)
    p_part = tl.cast(i_k, tl.int64) * T_total * H + o_t
    tl.store(dG_part + p_part, b_dGp, mask=m_c)
    tl.store(dbeta_part + p_part, b_dbeta, mask=m_c)
    tl.store(dlam_part + p_part, tl.sum(b_dx * b_q, 1), mask=m_c)
    if NORM:
        tl.store(sq_part + p_part, tl.sum(b_dq * b_q, 1), mask=m_c)
        tl.store(sk_part + p_part, tl.sum(b_dk * b_k, 1), mask=m_c)


@triton.jit
def _gate_bwd_kernel(
    dG_intra,
    dbeta_intra,
    dG_part,
    dbeta_part,
    dlam_part,  # (T, H) fp32 x2, (NK, T, H) fp32 x3
    chunk_bos,
    chunk_len,
    dg,
    dbeta,
    dlam,  # (T, H) in the inputs' dtypes
    q,
    k,
    dq,
    dk,  # with NORM: raw q, k and the gradients with respect to the normalised ones, overwritten in place
    sq_part,
    sk_part,
    Rq,
    Rk,
    T_total,
    NK: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    HAS_G: tl.constexpr,
    HAS_LAM: tl.constexpr,
    NORM: tl.constexpr,
):
    """Sum the per-K-block parts; dg = reverse cumsum of dG inside the chunk (G is the in-chunk cumsum of g).
    With NORM, the l2-norm's backward: ``dx = r (dy - y <dy, y>)`` for ``y = r x`` (q and k rows)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos, n, o_c, m_c, o_t = chunk_rows(chunk_bos, chunk_len, i_c, i_h, H, BC)
    b_dG = tl.load(dG_intra + o_t, mask=m_c, other=0.0)
    b_dbeta = tl.load(dbeta_intra + o_t, mask=m_c, other=0.0)
    b_dlam = tl.zeros([BC], dtype=tl.float32)
    for i_k in range(NK):
        p = i_k * T_total * H + o_t
        b_dG += tl.load(dG_part + p, mask=m_c, other=0.0)
        b_dbeta += tl.load(dbeta_part + p, mask=m_c, other=0.0)
        b_dlam += tl.load(dlam_part + p, mask=m_c, other=0.0)
    tl.store(dbeta + o_t, b_dbeta.to(dbeta.dtype.element_ty), mask=m_c)
    if HAS_LAM:
        tl.store(dlam + o_t, b_dlam.to(dlam.dtype.element_ty), mask=m_c)
    if HAS_G:
        # reverse cumsum as a masked row sum: dg_j = sum_{i >= j} dG_i
        b_dg = tl.sum(tl.where(o_c[:, None] >= o_c[None, :], b_dG[:, None], 0.0), 0)
        tl.store(dg + o_t, b_dg.to(dg.dtype.element_ty), mask=m_c)
    if NORM:
        b_sq = tl.zeros([BC], dtype=tl.float32)
        b_sk = tl.zeros([BC], dtype=tl.float32)
        for i_k in range(NK):
            p = i_k * T_total * H + o_t
            b_sq += tl.load(sq_part + p, mask=m_c, other=0.0)
            b_sk += tl.load(sk_part + p, mask=m_c, other=0.0)
        b_rq = tl.load(Rq + o_t, mask=m_c, other=0.0)
        b_rk = tl.load(Rk + o_t, mask=m_c, other=0.0)
        # dx = r dy - r^2 <dy, y> x
        b_cq, b_ck = b_rq * b_rq * b_sq, b_rk * b_rk * b_sk
        for i_k in range(tl.cdiv(K, BK)):
            o_k = i_k * BK + tl.arange(0, BK)
            p_ck = o_t[:, None] * K + o_k[None, :]
            m_ck = m_c[:, None] & (o_k < K)[None, :]
            b_dq = tl.load(dq + p_ck, mask=m_ck, other=0.0).to(tl.float32) * b_rq[:, None]
            b_dq -= tl.load(q + p_ck, mask=m_ck, other=0.0).to(tl.float32) * b_cq[:, None]
            tl.store(dq + p_ck, b_dq.to(dq.dtype.element_ty), mask=m_ck)
            b_dk = tl.load(dk + p_ck, mask=m_ck, other=0.0).to(tl.float32) * b_rk[:, None]
            b_dk -= tl.load(k + p_ck, mask=m_ck, other=0.0).to(tl.float32) * b_ck[:, None]
            tl.store(dk + p_ck, b_dk.to(dk.dtype.element_ty), mask=m_ck)


def chunk_backward(saved, do, dht, dh_last):
    """Gradients (dq, dk, dv, dg, dbeta, dlam, dh0); tokens laid out (T, H, ·), states fp32.

    ``saved``: the inputs q, k, v, g (or None), beta, lam (or None), the forward's G, W, U', Aqk, T,
    P * Gam, chunk-start states h and inverse q/k row norms R (None: q, k used as given), the chunk
    table, scale, variant and the dots' ``input_precision`` for fp32 operands ("tf32" or "ieee").
    """
    q, k, v, g, beta, lam = saved["inputs"]
    G, W, Up, Aqk, Tinv, PG, h, R = saved["forward"]
    table, scale, official = saved["table"], saved["scale"], saved["official"]
    precision = saved["dot_precision"]
    T, H, K = q.shape
    V = v.shape[-1]
    NC, N = table.num_chunks, table.num_sequences
    BC = Tinv.shape[-1]
    dev, f32 = q.device, torch.float32
    do = do.contiguous()
    norm = R is not None
    Rq, Rk = (G, G) if R is None else (R[0], R[1])

    cfg = settings("reverse", K, V)
    # H_LOWP: the end-state gradients kept for the K-block kernel in the inputs' 16-bit dtype (as h is)
    dS_dtype = q.dtype if cfg.pop("H_LOWP") and q.dtype != f32 else f32
    dS_end = torch.empty(NC, H, K, V, dtype=dS_dtype, device=dev)
    dUp = torch.empty(T, H, V, dtype=f32, device=dev)
    dh0 = torch.empty(N, H, K, V, dtype=f32, device=dev)
    launch(
        _reverse_state_kernel,
        (triton.cdiv(V, cfg["BV"]), N, H),
        cfg,
        q,
        k,
        W,
        G,
        Aqk,
        do,
        dht.contiguous(),
        dh_last.contiguous(),
        table.bos,
        table.len,
        table.seq_chunks,
        dS_end,
        dUp,
        dh0,
        Rq,
        Rk,
        scale,
        H=H,
        K=K,
        V=V,
        BC=BC,
        BK=_p2(K),
        NORM=norm,
        DOT_PRECISION=precision,
    )

    # dR, dP and dA have one reader, the K-block kernel: with LOWP it rounds them to the inputs' 16-bit
    # dtype anyway, so they are stored in that dtype (the same numbers, half the bytes)
    kq = settings("kq_bwd", K, V)
    to_kq = q.dtype if kq["LOWP"] else f32
    dR = torch.empty(T, H, V, dtype=to_kq, device=dev)
    dv = torch.empty_like(v)
    dP = torch.empty(NC, H, BC, BC, dtype=to_kq, device=dev)
    dA = torch.empty(NC, H, BC, BC, dtype=to_kq, device=dev)
    dG_intra = torch.empty(T, H, dtype=f32, device=dev)
    dbeta_intra = torch.empty(T, H, dtype=f32, device=dev)
    launch(
        _intra_bwd_kernel,
        (NC, H),
        settings("intra_bwd", K, V),
        v,
        G,
        beta,
        Tinv,
        Up,
        dUp,
        do,
        PG,
        Aqk,
        table.bos,
        table.len,
        dR,
        dv,
        dP,
        dA,
        dG_intra,
        dbeta_intra,
        scale,
        H=H,
        V=V,
        BC=BC,
        DOT_PRECISION=precision,
    )

    cfg = kq
    NK = triton.cdiv(K, cfg["BK"])
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    parts = torch.empty(5 if norm else 3, NK, T, H, dtype=f32, device=dev)
    sq, sk = (parts[0], parts[0]) if not norm else (parts[3], parts[4])
    launch(
        _kq_bwd_kernel,
        (NK, NC, H),
        cfg,
        q,
        k,
        G,
        beta,
        q if lam is None else lam,
        h,
        dS_end,
        Up,
        dR,
        do,
        dP,
        dA,
        table.bos,
        table.len,
        dq,
        dk,
        parts[0],
        parts[1],
        parts[2],
        sq,
        sk,
        Rq,
        Rk,
        scale,
        T,
        H=H,
        K=K,
        V=V,
        BC=BC,
        HAS_LAM=lam is not None,
        OFFICIAL=official,
        NORM=norm,
        DOT_PRECISION=precision,
    )

    dg = None if g is None else torch.empty_like(g)
    dbeta = torch.empty_like(beta)
    dlam = None if lam is None else torch.empty_like(lam)
    _gate_bwd_kernel[(NC, H)](
        dG_intra,
        dbeta_intra,
        parts[0],
        parts[1],
        parts[2],
        table.bos,
        table.len,
        dbeta if dg is None else dg,
        dbeta,
        dbeta if dlam is None else dlam,
        q,
        k,
        dq,
        dk,
        sq,
        sk,
        Rq,
        Rk,
        T,
        NK=NK,
        H=H,
        K=K,
        BC=BC,
        BK=min(64, _p2(K)),
        HAS_G=g is not None,
        HAS_LAM=lam is not None,
        NORM=norm,
    )
    return dq, dk, dv, dg, dbeta, dlam, dh0
