"""Orthogonality metrics of the paper (eqs. 2, 4, 9) and the candidate score of NORTH-Select.

All of them reduce to small Gram matrices: the singular values of an ``r x c`` matrix are the
square roots of the eigenvalues of its ``c x c`` (or ``r x r``) Gram matrix.  A count above a
threshold needs no spectrum at all (the inertia of ``Gram - epsilon^2 I`` from an LDL^T
factorisation), and NORTH-Select's candidates are borders of one shared Gram, so a single
eigendecomposition scores them all.  Grams are formed in float64 so that squaring the condition
number does not move singular values across the threshold ``epsilon`` (0.01 in the paper, an
eigenvalue of 1e-4).

Activations are passed as matrices ``A`` of shape ``(rows, channels)``: a dense layer's rows are
samples; a conv layer's rows are (sample, position) pairs (the authors' code layout, §3.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


def _gram(a: Tensor) -> Tensor:
    """The smaller Gram matrix of ``a`` (``a^T a`` or ``a a^T``), in ``a``'s dtype."""
    return a.T @ a if a.shape[1] <= a.shape[0] else a @ a.T


def _count_above(a: Tensor, divisor: float, epsilon: float) -> int:
    """Singular values of ``a / sqrt(divisor)`` above ``epsilon``, from the smaller Gram matrix."""
    a = a.to(torch.float64)
    return _gram_count_above(_gram(a), divisor, epsilon, lambda: a)


def _gram_count_above(g: Tensor, divisor: float, epsilon: float, matrix: Callable[[], Tensor]) -> int:
    """Singular values of ``matrix() / sqrt(divisor)`` above ``epsilon``, given its float64 Gram ``g``.

    The count needs no spectrum: by Sylvester's law of inertia it is the number of positive
    pivots of an LDL^T factorisation of ``g - epsilon^2 divisor I`` (Bunch-Kaufman 2x2 pivots
    always hold one eigenvalue of each sign), several times cheaper than ``eigvalsh``.  The
    Gram's trace bounds its largest eigenvalue: zero means an all-zero matrix (count 0); far
    above the threshold, the Gram's rounding could move values across it and an SVD of
    ``matrix()`` decides instead (rare in practice).
    """
    t = epsilon**2 * divisor
    bound = float(g.diagonal().sum())
    if bound == 0.0:
        return 0
    if epsilon <= 0 or t < _GRAM_RANGE * bound:
        return int((torch.linalg.svdvals(matrix().to(torch.float64)) > epsilon * math.sqrt(divisor)).sum())
    return eigen_count_above(g, t)


def eigen_count_above(g: Tensor, t: float) -> int:
    """Number of eigenvalues of the symmetric matrix ``g`` above ``t`` (inertia of ``g - t I``)."""
    n = g.shape[0]
    if n == 0:
        return 0
    shifted = g.clone()
    shifted.diagonal().sub_(t)
    if g.device.type != "cpu":  # LAPACK's sytrf pivots; other back ends may not report 2x2 blocks alike
        return int((torch.linalg.eigvalsh(shifted) > 0).sum())
    ld, pivots, _ = torch.linalg.ldl_factor_ex(shifted)
    # read on the host: a handful of numpy operations on n values cost less than the torch calls
    paired = pivots.numpy() < 0  # both rows of each 2x2 block
    positive = ld.diagonal().numpy() > 0
    return int((positive & ~paired).sum()) + int(paired.sum()) // 2


def _divisor(rows: int, channels: int, scale: str) -> int:
    if scale == "samples":
        return max(1, rows)
    if scale == "channels":
        return max(1, channels)
    raise ValueError(f"scale must be 'samples' or 'channels', got {scale!r}")


def scale_divisor(a: Tensor, scale: str) -> int:
    """``samples``: divide by the number of rows (paper eq. 2); ``channels``: by the number of columns
    (the authors' conv code, §9.3)."""
    return _divisor(a.shape[0], a.shape[1], scale)


def effective_dim_count(a: Tensor, *, epsilon: float = 0.01, scale: str = "samples") -> int:
    """``M * phi_ED`` (eq. 2): singular values of the scaled activation matrix above ``epsilon``."""
    divisor = scale_divisor(a, scale)
    if a.numel() == 0:
        return 0
    return _count_above(a, divisor, epsilon)


def activation_count(h: Tensor, channel_dim: int, *, epsilon: float = 0.01, scale: str = "samples") -> int:
    """:func:`effective_dim_count` of ``as_matrix(h, channel_dim)``, without forming that matrix.

    For a feature map with its channels first (``N, C, *spatial``) and at least as many positions
    as channels, the channel Gram is a batched product over samples of the map as stored: the
    channel-last copy of ``as_matrix`` and a tall-skinny product are avoided (the count measured
    1.3-4x faster on the step-cost benchmark's VGG-11 maps).
    """
    h = h.detach()
    channels = h.shape[channel_dim] if h.dim() else 0
    rows = h.numel() // channels if channels else 0
    divisor = _divisor(rows, channels, scale)
    if h.numel() == 0:
        return 0
    positions = rows // h.shape[0]
    if h.dim() >= 3 and channel_dim % h.dim() == 1 and positions >= channels:
        maps = h.to(torch.float64).reshape(h.shape[0], channels, positions)
        g = (maps @ maps.transpose(1, 2)).sum(0)
        return _gram_count_above(g, divisor, epsilon, lambda: as_matrix(h, channel_dim))
    return _count_above(as_matrix(h, channel_dim), divisor, epsilon)


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
    if rows.numel() == 0:
        return 0
    return _count_above(rows, rows.shape[1], epsilon)  # an all-zero weight has a zero Gram trace: 0


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

    Each stacked Gram is the existing one bordered by one row and column (or, with fewer rows than
    columns, the row Gram plus ``c c^T``), so one eigendecomposition of the existing Gram serves
    every candidate (see :func:`_bordered_spectra`): ``O(M^3 + C M^2)`` instead of ``C``
    eigenvalue problems of size ``M + 1``.
    """
    a = existing.to(torch.float64)
    c = candidates.to(torch.float64)
    rows, m = a.shape
    divisor = rows if scale == "samples" else m + 1
    if rows >= m + 1:  # columns: [[A^T A, A^T c], [c^T A, c^T c]]
        lam, q = torch.linalg.eigh(a.T @ a / divisor)
        z = q.T @ (a.T @ c) / divisor
        border = (c * c).sum(0) / divisor
    else:  # rows: A A^T + c c^T has the same non-zero spectrum
        lam, q = torch.linalg.eigh(a @ a.T / divisor)
        z = q.T @ c / math.sqrt(divisor)
        border = None
    count, total = _bordered_spectra(lam.clamp_min(0.0), z, border, epsilon**2, chunk_elements)
    return _combine(count, total, lexicographic)


# Trapezoid step and reach, in u = log s, of the resolvent integral in _bordered_spectra.  The
# integrand is analytic in the strip |Im u| < pi (its poles sit at s = -eigenvalue), so the rule
# converges like exp(-2 pi^2 / h): 1e-17 at h = 0.5.  The tails beyond +-_REACH around the
# largest eigenvalue weigh less than exp(-_REACH / 2) ~ 1e-9 of the largest singular value, the
# accuracy that square roots of float64 eigenvalues have anyway.
_STEP = 0.5
_REACH = 42.0


def _bordered_spectra(lam: Tensor, z: Tensor, border: Tensor | None, t: float, chunk_elements: int) -> tuple[Tensor, Tensor]:
    """Per candidate: eigenvalues above ``t`` and the sum of square roots of all eigenvalues of
    ``[[diag(lam), z], [z^T, border]]`` (``border`` given) or of ``diag(lam) + z z^T`` (``None``).

    Count (exact, Haynsworth inertia): the eigenvalues above ``t`` are those of ``diag(lam)``
    plus one when the Schur complement ``border - t - sum z_i^2 / (lam_i - t)`` is positive
    (rank one: when ``1 + sum z_i^2 / (lam_i - t)`` is negative).

    Sum: ``tr sqrt(G) = (1/pi) int_0^inf s^(-1/2) tr(G (G + s)^-1) ds``, and the new matrix's
    trace differs from ``diag(lam)``'s by ``1 - s phi'/phi`` with ``phi(s) = border + s - S1``
    (rank one: ``s S2 / (1 + S1)``), where ``S1 = sum z_i^2/(lam_i + s)``,
    ``S2 = sum z_i^2/(lam_i + s)^2``.  By interlacing that difference lies in ``[0, 1]`` (it is
    clamped there against rounding).  On a log grid of ``s`` both sums are two matrix products.
    """
    z2 = z * z
    base_count = int((lam > t).sum())
    base_sum = float(lam.sqrt().sum())
    # counts
    inv = 1.0 / (lam - t)
    schur = z2.T @ inv
    if border is not None:
        gains = (border - t - schur) > 0
    else:
        gains = (1.0 + schur) < 0
    count = base_count + gains.to(torch.float64)
    # sums: trapezoid in u = log s around the largest possible eigenvalue
    extra = border if border is not None else z2.sum(0)
    top = float(lam.max()) if lam.numel() else 0.0
    top += float(extra.max()) if extra.numel() else 0.0
    if top <= 0.0:
        return count, torch.full_like(count, base_sum)
    centre = math.log(top)
    u = torch.arange(centre - _REACH, centre + _REACH + _STEP, _STEP, dtype=torch.float64, device=lam.device)
    s = u.exp()
    r1 = 1.0 / (lam[:, None] + s[None, :])  # (M, K)
    r2 = r1 * r1
    weights = (u / 2).exp() * (_STEP / math.pi)
    per_chunk = max(1, chunk_elements // max(1, z2.shape[0] + s.numel()))
    sums = []
    for start in range(0, z2.shape[1], per_chunk):
        block = z2[:, start : start + per_chunk].T  # (n, M)
        s1, s2 = block @ r1, block @ r2  # (n, K)
        if border is not None:
            b = border[start : start + per_chunk, None]
            f = (b - s1 - s * s2) / (b + s - s1)
        else:
            f = s * s2 / (1.0 + s1)
        sums.append(f.nan_to_num(0.0).clamp(0.0, 1.0) @ weights)
    return count, base_sum + torch.cat(sums)


def _combine(count: Tensor, total: Tensor, lexicographic: bool) -> Tensor:
    if lexicographic:  # the sum, scaled below 1, only breaks ties between equal counts
        return count + total / (total.max().clamp_min(1e-300) * 2.0)
    return count + total


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
    "activation_count",
    "as_matrix",
    "candidate_gaps",
    "candidate_scores",
    "effective_dim",
    "effective_dim_count",
    "eigen_count_above",
    "gap_count",
    "orthogonality_gap",
    "per_sample",
    "scale_divisor",
    "weight_count",
]
