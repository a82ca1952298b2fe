"""Orthogonality metrics of the paper (eqs. 2, 4, 9) and the candidate score of NORTH-Select.

All of them reduce to spectra of small Gram matrices: the singular values of an ``r x c`` matrix
are the square roots of the eigenvalues of its ``c x c`` (or ``r x r``) Gram matrix, and
``eigvalsh`` of the smaller one is much cheaper than an SVD of the tall matrix while giving the
same counts.  Grams are formed in float64 so that squaring the condition number does not move
singular values across the threshold ``epsilon`` (0.01 in the paper, an eigenvalue of 1e-4).

Activations are passed as matrices ``A`` of shape ``(rows, channels)``: a dense layer's rows are
samples; a conv layer's rows are (sample, position) pairs (the authors' code layout, §3.1).
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def as_matrix(h: Tensor, channel_dim: int) -> Tensor:
    """``(rows, channels)`` view of an activation tensor: every other dimension becomes a row."""
    h = h.detach()
    return h.movedim(channel_dim, -1).reshape(-1, h.shape[channel_dim])


def per_sample(h: Tensor) -> Tensor:
    """``(samples, features)``: the layout of the orthogonality gap (conv features include positions)."""
    return h.detach().reshape(h.shape[0], -1)


# Eigenvalues of a float64 Gram are accurate to ~1e-16 * the largest one; below this ratio of
# threshold to largest eigenvalue the count could be off, and an SVD is used instead.
_GRAM_RANGE = 1e-11


def _spectrum(a: Tensor, divisor: float, epsilon: float = 0.0) -> Tensor:
    """Singular values of ``a / sqrt(divisor)`` from the smaller Gram matrix (descending).

    Falls back to an SVD when the largest singular value exceeds ``epsilon`` by so much that the
    Gram's rounding could move values across ``epsilon`` (activations above ~1e3 times epsilon
    squared range; rare in practice).
    """
    a = a.to(torch.float64)
    g = a.T @ a if a.shape[1] <= a.shape[0] else a @ a.T
    eig = torch.linalg.eigvalsh(g / divisor).clamp_min(0.0)
    if epsilon > 0 and eig.numel() and epsilon**2 < _GRAM_RANGE * float(eig[-1]):
        return torch.linalg.svdvals(a / math.sqrt(divisor))
    return eig.flip(0).sqrt()


def scale_divisor(a: Tensor, scale: str) -> int:
    """``samples``: divide by the number of rows (paper eq. 2); ``channels``: by the number of columns
    (the authors' conv code, §9.3)."""
    if scale == "samples":
        return max(1, a.shape[0])
    if scale == "channels":
        return max(1, a.shape[1])
    raise ValueError(f"scale must be 'samples' or 'channels', got {scale!r}")


def effective_dim_count(a: Tensor, *, epsilon: float = 0.01, scale: str = "samples") -> int:
    """``M * phi_ED`` (eq. 2): singular values of the scaled activation matrix above ``epsilon``."""
    if a.numel() == 0 or not torch.any(a):
        return 0
    sv = _spectrum(a, scale_divisor(a, scale), epsilon)
    return int((sv > epsilon).sum())


def effective_dim(a: Tensor, *, epsilon: float = 0.01, scale: str = "samples") -> float:
    """phi_ED: the count as a fraction of the number of channels."""
    return effective_dim_count(a, epsilon=epsilon, scale=scale) / max(1, a.shape[1])


def orthogonality_gap(s: Tensor) -> float:
    """phi_OG (eq. 9) of a ``(samples, features)`` matrix: ``|| S S^T / ||S||^2 - I/n ||_F``.

    Uses ``||S S^T||_F = ||S^T S||_F`` and ``tr(S S^T) = ||S||^2``, so only the smaller Gram
    matrix is formed.  An all-zero matrix has gap 1 (nothing is orthogonal).
    """
    s = s.to(torch.float64)
    n = s.shape[0]
    total = float((s * s).sum())
    if n == 0 or total == 0.0:
        return 1.0
    g = s.T @ s if s.shape[1] <= n else s @ s.T
    value = float((g * g).sum()) / total**2 - 1.0 / n
    return math.sqrt(max(0.0, value))


def gap_count(s: Tensor, width: int) -> int:
    """The gap as a pseudo-count comparable to effective-dimension counts: ``ceil((1 - gap) M)``."""
    return math.ceil((1.0 - orthogonality_gap(s)) * width - 1e-9)


def weight_count(w: Tensor, *, epsilon: float = 0.01, bias: Tensor | None = None) -> int:
    """Effective dimension count of a weight (eq. 4, code form): rows are output units, each row the
    unit's flattened fan-in, scaled by ``1/sqrt(fan_in)``; the bias column only when given."""
    rows = w.detach().reshape(w.shape[0], -1)
    if bias is not None:
        rows = torch.cat([rows, bias.detach().reshape(-1, 1)], dim=1)
    if rows.numel() == 0 or not torch.any(rows):
        return 0
    sv = _spectrum(rows, rows.shape[1], epsilon)
    return int((sv > epsilon).sum())


def candidate_scores(
    existing: Tensor,
    candidates: Tensor,
    *,
    epsilon: float = 0.01,
    scale: str = "samples",
    lexicographic: bool = False,
    chunk_elements: int = 2**24,
) -> Tensor:
    """NORTH-Select's score of each candidate column against the existing activation columns.

    ``existing``: ``(rows, M)``; ``candidates``: ``(rows, C)``.  Candidate ``c`` is scored on
    ``[existing, c]`` alone (never against other candidates) as ``count + sum of singular values``
    (the authors' additive "tie-break", §3.4), higher is better.  With ``lexicographic`` the count
    dominates exactly (the sum only breaks ties), as the paper's text describes.

    The ``(M+1) x (M+1)`` Gram of each stacked matrix is assembled from ``A^T A``, ``A^T c`` and
    ``c^T c`` (computed once for all candidates) and all spectra come from one batched ``eigvalsh``.
    """
    a = existing.to(torch.float64)
    c = candidates.to(torch.float64)
    m = a.shape[1]
    rows = a.shape[0]
    divisor = rows if scale == "samples" else m + 1
    if rows < m + 1:
        return _row_side_scores(a, c, divisor, epsilon, lexicographic, chunk_elements)
    gaa = a.T @ a
    gac = a.T @ c
    gcc = (c * c).sum(0)
    per_chunk = max(1, chunk_elements // (m + 1) ** 2)
    counts, sums = [], []
    for start in range(0, c.shape[1], per_chunk):
        stop = min(start + per_chunk, c.shape[1])
        n = stop - start
        g = gaa.new_empty((n, m + 1, m + 1))
        g[:, :m, :m] = gaa
        g[:, :m, m] = gac[:, start:stop].T
        g[:, m, :m] = gac[:, start:stop].T
        g[:, m, m] = gcc[start:stop]
        sv = torch.linalg.eigvalsh(g / divisor).clamp_min(0.0).sqrt()
        counts.append((sv > epsilon).sum(1).to(torch.float64))
        sums.append(sv.sum(1))
    return _combine(torch.cat(counts), torch.cat(sums), lexicographic)


def _combine(count: Tensor, total: Tensor, lexicographic: bool) -> Tensor:
    if lexicographic:  # the sum, scaled below 1, only breaks ties between equal counts
        return count + total / (total.max().clamp_min(1e-300) * 2.0)
    return count + total


def _row_side_scores(a: Tensor, c: Tensor, divisor: float, epsilon: float, lexicographic: bool, chunk: int) -> Tensor:
    """Fewer rows than columns: the same spectra from ``A A^T + c c^T`` (rows x rows)."""
    rows = a.shape[0]
    base = a @ a.T
    per_chunk = max(1, chunk // rows**2)
    counts, sums = [], []
    for start in range(0, c.shape[1], per_chunk):
        block = c[:, start : start + per_chunk].T  # (n, rows)
        g = base + block[:, :, None] * block[:, None, :]
        sv = torch.linalg.eigvalsh(g / divisor).clamp_min(0.0).sqrt()
        counts.append((sv > epsilon).sum(1).to(torch.float64))
        sums.append(sv.sum(1))
    return _combine(torch.cat(counts), torch.cat(sums), lexicographic)


def candidate_gaps(existing: Tensor, candidates: list[Tensor] | Tensor) -> Tensor:
    """Orthogonality gap of ``[existing, candidate]`` for each candidate (lower is better).

    ``existing``: ``(samples, F)``; each candidate ``(samples, f)`` (``f`` = positions of one new
    channel) or, given as one ``(samples, C)`` matrix, one column per candidate.  Uses
    ``||S S^T + C C^T||^2 = ||S S^T||^2 + 2 ||S^T C||^2 + ||C^T C||^2``.
    """
    s = existing.to(torch.float64)
    n = s.shape[0]
    gss = s.T @ s if s.shape[1] <= n else s @ s.T
    base_sq = float((gss * gss).sum())
    base_norm = float((s * s).sum())
    cols = [candidates[:, i : i + 1] for i in range(candidates.shape[1])] if isinstance(candidates, Tensor) else candidates
    out = []
    for c in cols:
        c = c.to(torch.float64)
        cross = s.T @ c
        cc = c.T @ c
        total = base_norm + float((c * c).sum())
        if total == 0.0:
            out.append(1.0)
            continue
        sq = base_sq + 2 * float((cross * cross).sum()) + float((cc * cc).sum())
        out.append(math.sqrt(max(0.0, sq / total**2 - 1.0 / n)))
    return torch.tensor(out, dtype=torch.float64)


__all__ = [
    "as_matrix",
    "candidate_gaps",
    "candidate_scores",
    "effective_dim",
    "effective_dim_count",
    "gap_count",
    "orthogonality_gap",
    "per_sample",
    "scale_divisor",
    "weight_count",
]
