"""Orthogonality metrics (algorithms.md §3) and trigger arithmetic (§4, §9 items 1, 2, 3, 5, 6, 12, 21).

Every metric is checked against a float64 reference written straight from the definitions, with
singular values from ``torch.linalg.svdvals`` of the explicitly scaled matrix (never a Gram matrix).
Schedules are checked against exact rational arithmetic (``fractions.Fraction``).
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import archgrow
from archgrow import metrics, models
from archgrow.growth.binding import GroupBinding
from archgrow.growth.measure import Measurement, measure, measuring
from archgrow.growth.probes import build_probe
from archgrow.metrics import (
    activation_count,
    as_matrix,
    candidate_gaps,
    candidate_scores,
    effective_dim,
    effective_dim_count,
    eigen_count_above,
    gap_count,
    orthogonality_gap,
    per_sample,
    weight_count,
)
from archgrow.spec.schema import ActivationTrigger, BatchedSchedule, LinearSchedule, Settings, WeightTrigger
from archgrow.triggers import TRIGGERS, ActivationRule, BatchedRule, Decision, LinearRule, WeightRule, grow_count

EPS = 0.01


# --------------------------------------------------------------------------- references
def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64)


def with_singular_values(rows: int, cols: int, s: list[float], seed: int = 0) -> torch.Tensor:
    """``U diag(s) V^T`` with random orthonormal ``U`` (rows x k) and ``V`` (cols x k)."""
    k = len(s)
    u, _ = torch.linalg.qr(randn(rows, k, seed=seed))
    v, _ = torch.linalg.qr(randn(cols, k, seed=seed + 1))
    return u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T


def ref_count(a: torch.Tensor, epsilon: float = EPS, scale: str = "samples") -> int:
    """#{sigma > eps} of a / sqrt(rows) ("samples", eq. 2) or a / sqrt(cols) ("channels", the conv code)."""
    a = a.to(torch.float64)
    divisor = a.shape[0] if scale == "samples" else a.shape[1]
    return int((torch.linalg.svdvals(a / math.sqrt(divisor)) > epsilon).sum())


def ref_gap(s: torch.Tensor) -> float:
    """|| S S^T / ||S||_F^2 - I/n ||_F with n = rows (eq. 9); 1 for an all-zero matrix."""
    s = s.to(torch.float64)
    n = s.shape[0]
    fro2 = float((s * s).sum())
    if fro2 == 0.0:
        return 1.0
    return float(torch.linalg.matrix_norm(s @ s.T / fro2 - torch.eye(n, dtype=torch.float64) / n))


def ref_weight_count(w: torch.Tensor, epsilon: float = EPS, bias: torch.Tensor | None = None) -> int:
    """One row per output unit (its flattened fan-in, plus the bias column when given), / sqrt(#columns)."""
    rows = w.detach().to(torch.float64).reshape(w.shape[0], -1)
    if bias is not None:
        rows = torch.cat([rows, bias.detach().to(torch.float64).reshape(-1, 1)], dim=1)
    return int((torch.linalg.svdvals(rows / math.sqrt(rows.shape[1])) > epsilon).sum())


def ref_scores(existing: torch.Tensor, candidates: torch.Tensor, epsilon: float, scale: str) -> list[tuple[int, float]]:
    """(count, sum of singular values) of [existing, c] / sqrt(rows or M+1), per candidate column c."""
    e = existing.to(torch.float64)
    out = []
    for i in range(candidates.shape[1]):
        mat = torch.cat([e, candidates[:, i : i + 1].to(torch.float64)], dim=1)
        divisor = mat.shape[0] if scale == "samples" else e.shape[1] + 1
        sv = torch.linalg.svdvals(mat / math.sqrt(divisor))
        out.append((int((sv > epsilon).sum()), float(sv.sum())))
    return out


# --------------------------------------------------------------------------- effective dimension
def _cases() -> dict[str, torch.Tensor]:
    return {
        "full_rank_tall": randn(300, 20, seed=1),
        "full_rank_wide": randn(12, 40, seed=2),
        "rank_deficient_tall": randn(300, 4, seed=3) @ randn(4, 20, seed=4),
        "rank_deficient_wide": randn(10, 3, seed=5) @ randn(3, 50, seed=6),
        "rank_deficient_large_scale": 100.0 * (randn(200, 5, seed=7) @ randn(5, 30, seed=8)),
        "post_relu": torch.relu(randn(300, 20, seed=9)),
        "post_relu_low_rank": torch.relu(randn(300, 3, seed=10) @ randn(3, 20, seed=11)),
        "small_scale": 0.02 * randn(400, 30, seed=12),
        "square": randn(25, 25, seed=13),
        "single_row": randn(1, 7, seed=14),
        "single_column": randn(9, 1, seed=15),
        "zero": torch.zeros(50, 10, dtype=torch.float64),
    }


CASES = _cases()


@pytest.mark.parametrize("scale", ["samples", "channels"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(CASES))
def test_effective_dim_count_matches_svdvals_reference(name: str, dtype: torch.dtype, scale: str) -> None:
    a = CASES[name].to(dtype)
    expected = ref_count(a, EPS, scale)
    assert effective_dim_count(a, epsilon=EPS, scale=scale) == expected
    assert effective_dim(a, epsilon=EPS, scale=scale) == pytest.approx(expected / a.shape[1])


def test_effective_dim_count_known_values() -> None:
    assert effective_dim_count(CASES["full_rank_tall"]) == 20
    assert effective_dim_count(CASES["full_rank_wide"], scale="channels") == 12  # rank <= rows
    assert effective_dim_count(CASES["rank_deficient_tall"]) == 4
    assert effective_dim_count(CASES["rank_deficient_wide"], scale="channels") == 3
    assert effective_dim_count(CASES["rank_deficient_large_scale"]) == 5
    assert effective_dim_count(CASES["zero"]) == 0
    assert effective_dim(CASES["zero"]) == 0.0
    assert effective_dim(CASES["rank_deficient_tall"]) == pytest.approx(4 / 20)
    assert effective_dim_count(torch.zeros(0, 5)) == 0


STRADDLE = [0.5, 0.02, 0.011, 0.009, 0.001]  # singular values after scaling: 3 above 0.01


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(200, 20), (10, 30), (5, 5)], ids=["tall", "wide", "square"])
@pytest.mark.parametrize("scale", ["samples", "channels"])
def test_effective_dim_count_singular_values_straddling_epsilon(scale: str, shape: tuple[int, int], dtype) -> None:
    rows, cols = shape
    divisor = rows if scale == "samples" else cols
    a = with_singular_values(rows, cols, [s * math.sqrt(divisor) for s in STRADDLE], seed=21).to(dtype)
    assert ref_count(a, EPS, scale) == 3
    assert effective_dim_count(a, epsilon=EPS, scale=scale) == 3
    assert effective_dim(a, epsilon=EPS, scale=scale) == pytest.approx(3 / cols)
    # the threshold is strict and follows epsilon
    assert effective_dim_count(a, epsilon=0.015, scale=scale) == 2
    assert effective_dim_count(a, epsilon=0.005, scale=scale) == 4
    assert effective_dim_count(a, epsilon=1e-4, scale=scale) == 5


def test_effective_dim_scale_changes_the_count() -> None:
    # built for "samples" on a 200 x 20 matrix; under "channels" every value is sqrt(200/20) larger:
    # 1.58, 0.063, 0.035, 0.028, 0.0032 -> 4 above 0.01
    a = with_singular_values(200, 20, [s * math.sqrt(200) for s in STRADDLE], seed=22)
    assert effective_dim_count(a, scale="samples") == 3
    assert effective_dim_count(a, scale="channels") == 4 == ref_count(a, EPS, "channels")
    with pytest.raises(ValueError, match="scale"):
        effective_dim_count(a, scale="rows")


def test_effective_dim_count_is_invariant_to_row_order_and_float32_input_dtype_is_accepted() -> None:
    a = CASES["post_relu_low_rank"]
    perm = torch.randperm(a.shape[0], generator=gen(3))
    assert effective_dim_count(a[perm]) == effective_dim_count(a)
    assert effective_dim_count(a.float()) == effective_dim_count(a)


def _map_with_singular_values(n: int, c: int, hw: tuple[int, int], s: list[float], seed: int) -> torch.Tensor:
    """An ``(n, c, *hw)`` map whose ``as_matrix`` layout has the given singular values."""
    return with_singular_values(n * hw[0] * hw[1], c, s, seed=seed).reshape(n, *hw, c).permute(0, 3, 1, 2)


@pytest.mark.parametrize("scale", ["samples", "channels"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "n, c, hw",
    [(4, 6, (4, 4)), (3, 6, (2, 2)), (2, 16, (2, 2)), (1, 40, (3, 3))],
    ids=["positions>channels", "positions<channels", "rows=channels/2", "rows<channels"],
)
def test_activation_count_equals_the_matrix_count_for_maps(n: int, c: int, hw: tuple[int, int], dtype, scale: str) -> None:
    rows = n * hw[0] * hw[1]
    divisor = rows if scale == "samples" else c
    values = [s * math.sqrt(divisor) for s in STRADDLE][: min(rows, c)]
    h = _map_with_singular_values(n, c, hw, values, seed=23).to(dtype)
    expected = ref_count(as_matrix(h, 1), EPS, scale)
    assert expected == min(3, len(values))  # the map really straddles epsilon
    assert activation_count(h, 1, epsilon=EPS, scale=scale) == expected
    assert activation_count(h, -3, epsilon=EPS, scale=scale) == expected
    # channels last goes through as_matrix: same answer
    assert activation_count(h.permute(0, 2, 3, 1), 3, epsilon=EPS, scale=scale) == expected


def test_activation_count_dense_zero_empty_and_bad_scale() -> None:
    a = CASES["rank_deficient_tall"]
    assert activation_count(a, 1) == effective_dim_count(a) == 4
    assert activation_count(torch.zeros(3, 5, 4, 4), 1) == 0
    assert activation_count(torch.zeros(0, 5, 4, 4), 1) == 0
    # huge values: the float64 Gram's rounding could cross epsilon, the SVD path decides
    big = _map_with_singular_values(2, 6, (4, 4), [1e7, 1e6, 0.02 * math.sqrt(32), 0.005 * math.sqrt(32)], seed=24)
    assert activation_count(big, 1) == ref_count(as_matrix(big, 1)) == 3
    with pytest.raises(ValueError, match="scale"):
        activation_count(torch.ones(2, 3, 4, 4), 1, scale="rows")


# --------------------------------------------------------------------------- orthogonality gap
GAP_CASES = {
    "rows_lt_cols": randn(5, 20, seed=31),
    "rows_gt_cols": randn(40, 6, seed=32),
    "square": randn(8, 8, seed=33),
    "post_relu": torch.relu(randn(16, 50, seed=34)),
    "low_rank": randn(30, 2, seed=35) @ randn(2, 10, seed=36),
    "one_row": randn(1, 9, seed=37),
    "one_column": randn(7, 1, seed=38),
    "float32": randn(12, 30, seed=39).float(),
}


@pytest.mark.parametrize("name", list(GAP_CASES))
def test_orthogonality_gap_matches_direct_formula(name: str) -> None:
    s = GAP_CASES[name]
    # the gap is a square root: rounding of order 1e-16 inside it shows as up to ~1.5e-8 near 0
    assert orthogonality_gap(s) == pytest.approx(ref_gap(s), abs=1e-7)
    assert 0.0 <= orthogonality_gap(s) <= 1.0
    for width in (1, 7, 64):
        assert gap_count(s, width) == math.ceil((1.0 - ref_gap(s)) * width - 1e-9)


def test_orthogonality_gap_limits() -> None:
    assert orthogonality_gap(torch.zeros(6, 4)) == 1.0
    assert orthogonality_gap(torch.zeros(3, 10)) == 1.0
    assert gap_count(torch.zeros(6, 4), 10) == 0
    # orthonormal rows (n <= f): S S^T = I, ||S||^2 = n -> gap 0; scale does not matter
    q, _ = torch.linalg.qr(randn(20, 5, seed=40))
    for s in (q.T, 7.5 * q.T):
        assert orthogonality_gap(s) == pytest.approx(0.0, abs=1e-6)
        assert gap_count(s, 16) == 16
    # orthogonal (not normalised) rows are not the minimum: only equal norms give 0
    assert orthogonality_gap(torch.diag(torch.tensor([1.0, 2.0, 3.0]))) == pytest.approx(
        ref_gap(torch.diag(torch.tensor([1.0, 2.0, 3.0])))
    )
    assert orthogonality_gap(torch.diag(torch.tensor([1.0, 2.0, 3.0]))) > 0.1
    # identical rows: S S^T / ||S||^2 = J / n -> gap sqrt(1 - 1/n)
    for n in (1, 2, 4, 10):
        s = randn(1, 13, seed=41).expand(n, 13)
        assert orthogonality_gap(s) == pytest.approx(math.sqrt(1 - 1 / n), abs=1e-7)
    s4 = randn(1, 13, seed=41).expand(4, 13)
    assert gap_count(s4, 10) == math.ceil((1 - math.sqrt(0.75)) * 10) == 2


def test_gap_count_is_not_pushed_up_by_float_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # (1 - 0.7) * 10 = 3.0000000000000004 in floating point; the count is 3
    monkeypatch.setattr(metrics, "orthogonality_gap", lambda s: 0.7)
    assert gap_count(torch.ones(2, 2), 10) == 3
    monkeypatch.setattr(metrics, "orthogonality_gap", lambda s: 0.25)
    assert gap_count(torch.ones(2, 2), 8) == 6
    monkeypatch.setattr(metrics, "orthogonality_gap", lambda s: 0.26)
    assert gap_count(torch.ones(2, 2), 8) == 6  # ceil(5.92)


# --------------------------------------------------------------------------- weight metric
def test_weight_count_dense_matches_reference_and_excludes_bias_by_default() -> None:
    lin = torch.nn.Linear(64, 16)
    assert weight_count(lin.weight) == ref_weight_count(lin.weight) == 16
    # fan-in 40: chosen singular values of W / sqrt(40)
    w = with_singular_values(6, 40, [s * math.sqrt(40) for s in STRADDLE], seed=50)
    assert weight_count(w) == ref_weight_count(w) == 3
    # dividing by sqrt(rows) would give 0.5*sqrt(40/6) ... : 4 above eps, not 3
    assert ref_count(w, EPS, "samples") == 4
    assert weight_count(w, epsilon=0.015) == 2


def test_weight_count_with_bias_appends_a_column() -> None:
    w = randn(8, 2, seed=51) @ randn(2, 20, seed=52)  # rank 2
    b = randn(8, seed=53)
    assert weight_count(w) == 2
    assert weight_count(w, bias=b) == ref_weight_count(w, bias=b) == 3
    # the bias column is part of the matrix that is scaled (1/sqrt(fan_in + 1))
    wb = torch.cat([w, b[:, None]], dim=1)
    assert weight_count(w, bias=b) == ref_count(wb, EPS, "channels")
    # a bias inside the rows' span adds nothing
    assert weight_count(w, bias=w[:, 0]) == 2
    # all-zero weight and bias
    assert weight_count(torch.zeros(4, 5)) == 0
    assert weight_count(torch.zeros(4, 5), bias=torch.zeros(4)) == 0
    assert weight_count(torch.zeros(4, 5), bias=torch.ones(4)) == 1


def test_weight_count_conv_flattens_each_output_channel() -> None:
    conv = torch.nn.Conv2d(3, 8, 3)
    assert weight_count(conv.weight) == ref_weight_count(conv.weight) == 8
    assert weight_count(conv.weight, bias=conv.bias) == ref_weight_count(conv.weight, bias=conv.bias)
    # rank 3 across output channels; fan-in 3*3*3 = 27
    w = (randn(8, 3, seed=54) @ randn(3, 27, seed=55)).reshape(8, 3, 3, 3)
    assert weight_count(w) == ref_weight_count(w) == 3
    # chosen singular values after the 1/sqrt(27) scale
    w = with_singular_values(5, 27, [s * math.sqrt(27) for s in STRADDLE], seed=56).reshape(5, 3, 3, 3)
    assert weight_count(w) == 3
    assert weight_count(w.float()) == 3
    # parameters with gradients are fine (detached)
    assert weight_count(torch.nn.Parameter(w.clone())) == 3


# --------------------------------------------------------------------------- layouts
def test_as_matrix_dense_and_conv_layouts() -> None:
    h2 = randn(6, 4, seed=60)
    assert torch.equal(as_matrix(h2, 1), h2)
    n, c, hh, ww = 2, 3, 4, 5
    h = torch.arange(n * c * hh * ww, dtype=torch.float32).reshape(n, c, hh, ww)
    m = as_matrix(h, 1)
    assert m.shape == (n * hh * ww, c)
    for ni, ci, i, j in [(0, 0, 0, 0), (1, 2, 3, 4), (1, 1, 2, 3), (0, 2, 1, 0)]:
        assert m[ni * hh * ww + i * ww + j, ci] == h[ni, ci, i, j]
    # every column is one channel's values over (sample, position) pairs
    for ci in range(c):
        assert torch.equal(torch.sort(m[:, ci]).values, torch.sort(h[:, ci].reshape(-1)).values)
    # channels-last input
    hl = h.permute(0, 2, 3, 1)
    assert torch.equal(as_matrix(hl, 3), m)
    # detached
    hg = h.clone().requires_grad_(True)
    assert not as_matrix(hg, 1).requires_grad


def test_per_sample_layout() -> None:
    n, c, hh, ww = 2, 3, 4, 5
    h = torch.arange(n * c * hh * ww, dtype=torch.float32).reshape(n, c, hh, ww)
    s = per_sample(h)
    assert s.shape == (n, c * hh * ww)
    for ni, ci, i, j in [(0, 0, 0, 0), (1, 2, 3, 4), (1, 1, 2, 3)]:
        assert s[ni, ci * hh * ww + i * ww + j] == h[ni, ci, i, j]
    h2 = randn(6, 4, seed=61)
    assert torch.equal(per_sample(h2), h2)
    assert not per_sample(h.clone().requires_grad_(True)).requires_grad


# --------------------------------------------------------------------------- candidate scores
def _candidates(rows: int, existing: torch.Tensor, seed: int) -> torch.Tensor:
    """Random, in-span, zero, tiny and post-ReLU candidates."""
    cols = [
        randn(rows, 4, seed=seed),
        existing[:, :2] @ randn(2, 2, seed=seed + 1),
        torch.zeros(rows, 1, dtype=torch.float64),
        1e-3 * randn(rows, 1, seed=seed + 2),
        torch.relu(randn(rows, 2, seed=seed + 3)),
    ]
    return torch.cat(cols, dim=1)


@pytest.mark.parametrize("scale", ["samples", "channels"])
@pytest.mark.parametrize(
    "rows,m",
    [(200, 6), (7, 6), (5, 12), (6, 6), (1, 3)],
    ids=["column_path", "rows_eq_m_plus_1", "row_path", "row_path_rows_eq_m", "row_path_one_row"],
)
def test_candidate_scores_match_reference(rows: int, m: int, scale: str) -> None:
    existing = randn(rows, m, seed=70)
    if rows > 2 and m > 2:
        existing[:, -1] = existing[:, 0] - existing[:, 1]  # rank deficient existing block
    cand = _candidates(rows, existing, seed=71)
    got = candidate_scores(existing, cand, epsilon=EPS, scale=scale)
    ref = ref_scores(existing, cand, EPS, scale)
    assert got.shape == (cand.shape[1],)
    assert got.dtype == torch.float64
    expected = torch.tensor([cnt + total for cnt, total in ref], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # float32 inputs and tiny chunks give the same numbers
    got32 = candidate_scores(existing.float(), cand.float(), epsilon=EPS, scale=scale)
    torch.testing.assert_close(got32, expected, rtol=0, atol=1e-4)
    chunked = candidate_scores(existing, cand, epsilon=EPS, scale=scale, chunk_elements=1)
    torch.testing.assert_close(chunked, got, rtol=0, atol=1e-6)  # sqrt of ~1e-16 eigenvalue noise
    # lexicographic: the count part is exact, the rest is below 1 and ordered like the sums
    lex = candidate_scores(existing, cand, epsilon=EPS, scale=scale, lexicographic=True)
    assert [math.floor(v) for v in lex.tolist()] == [cnt for cnt, _ in ref]


def test_candidate_scores_straddling_epsilon_column_path() -> None:
    # existing columns: orthonormal directions with scaled singular value 1; each candidate adds one
    # new orthogonal direction with a chosen scaled singular value
    rows, m = 100, 4
    q, _ = torch.linalg.qr(randn(rows, m + 5, seed=72))
    root = math.sqrt(rows)
    existing = q[:, :m] * root
    new = [0.5, 0.02, 0.011, 0.009, 0.001]
    cand = torch.stack([q[:, m + i] * root * s for i, s in enumerate(new)], dim=1)
    got = candidate_scores(existing, cand, epsilon=EPS)
    expected = torch.tensor([(m + (s > EPS)) + m + s for s in new], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def _lexicographic_setup(row_path: bool) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, float]]]:
    """Candidates: A (new direction, sv 0.02), B (10x an existing direction), C (new direction, sv 0.5).

    A and C raise the count by one, B does not but has by far the largest sum of singular values.
    """
    if row_path:  # 4 rows, M = 4 existing columns of rank 3 -> rows < M + 1
        rows, m = 4, 4
        u, _ = torch.linalg.qr(randn(rows, rows, seed=80))
        v, _ = torch.linalg.qr(randn(m, 3, seed=81))
        existing = u[:, :3] @ v.T * math.sqrt(rows)
        free = u[:, 3]
    else:
        rows, m = 100, 4
        u, _ = torch.linalg.qr(randn(rows, m + 1, seed=82))
        existing = u[:, :m] * math.sqrt(rows)
        free = u[:, m]
    first = u[:, 0]
    root = math.sqrt(rows)
    cand = torch.stack([free * root * 0.02, first * root * 10.0, free * root * 0.5], dim=1)
    return existing, cand, ref_scores(existing, cand, EPS, "samples")


@pytest.mark.parametrize("row_path", [False, True], ids=["column_path", "row_path"])
def test_candidate_scores_lexicographic_orders_by_count_then_sum(row_path: bool) -> None:
    existing, cand, ref = _lexicographic_setup(row_path)
    counts = [c for c, _ in ref]
    sums = [s for _, s in ref]
    assert counts[0] == counts[2] == counts[1] + 1  # A, C gain a direction, B does not
    assert sums[1] > sums[2] > sums[0]  # but B has the largest sum
    additive = candidate_scores(existing, cand, epsilon=EPS)
    torch.testing.assert_close(additive, torch.tensor([c + s for c, s in ref], dtype=torch.float64), rtol=0, atol=1e-6)
    assert torch.argsort(additive, descending=True).tolist() == [1, 2, 0]  # the code's additive score: B first
    lex = candidate_scores(existing, cand, epsilon=EPS, lexicographic=True)
    assert torch.argsort(lex, descending=True).tolist() == [2, 0, 1]  # count first, then sum: C, A, B
    expected_order = sorted(range(3), key=lambda i: (counts[i], sums[i]), reverse=True)
    assert torch.argsort(lex, descending=True).tolist() == expected_order


def test_candidate_scores_lexicographic_matches_tuple_order_on_random_candidates() -> None:
    existing = randn(50, 8, seed=90)
    existing[:, 5:] = existing[:, :3] * 2.0
    cand = torch.cat([0.05 * randn(50, 6, seed=91), existing[:, :4] * 3.0, 0.001 * randn(50, 2, seed=92)], dim=1)
    ref = ref_scores(existing, cand, EPS, "samples")
    lex = candidate_scores(existing, cand, epsilon=EPS, lexicographic=True).tolist()
    for i in range(len(ref)):
        for j in range(len(ref)):
            if ref[i][0] != ref[j][0] or abs(ref[i][1] - ref[j][1]) > 1e-6:
                assert (lex[i] > lex[j]) == (ref[i] > ref[j]), (i, j, ref[i], ref[j])


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0], ids=["tiny", "unit", "large"])
def test_candidate_scores_on_wide_post_relu_layers_with_dead_units(scale: float) -> None:
    """The bordered-spectrum scores on realistic layers: post-ReLU, dead (all-zero) units, exact
    zero eigenvalues, many candidates, against an SVD of every stacked matrix."""
    rows, m = 120, 40
    w = randn(30, m + 60, seed=110)
    x = randn(rows, 30, seed=111)
    acts = torch.relu(x @ w) * scale
    existing = acts[:, :m].clone()
    existing[:, :5] = 0.0  # dead units
    existing[:, 5:8] = existing[:, 8:11]  # duplicated units
    cand = torch.cat([acts[:, m:], existing[:, 8:12] * 2.0, torch.zeros(rows, 1, dtype=torch.float64)], dim=1)
    for divisor_scale in ("samples", "channels"):
        got = candidate_scores(existing, cand, epsilon=EPS, scale=divisor_scale)
        ref = ref_scores(existing, cand, EPS, divisor_scale)
        counts = torch.tensor([c for c, _ in ref], dtype=torch.float64)
        sums = torch.tensor([t for _, t in ref], dtype=torch.float64)
        torch.testing.assert_close(got, counts + sums, rtol=1e-9, atol=1e-6 * max(1.0, scale))
        assert torch.argsort(got, descending=True)[:5].tolist() == torch.argsort(counts + sums, descending=True)[:5].tolist()


def test_candidate_scores_count_part_is_exact_around_epsilon() -> None:
    """The count comes from inertia, not from rounded square roots: new directions whose singular
    value sits a hair above or below epsilon are counted on the right side."""
    rows, m = 50, 3
    q, _ = torch.linalg.qr(randn(rows, m + 4, seed=120))
    root = math.sqrt(rows)
    existing = q[:, :m] * root
    new = [EPS * (1 + 1e-6), EPS * (1 - 1e-6), EPS * 2, EPS / 2]
    cand = torch.stack([q[:, m + i] * root * s for i, s in enumerate(new)], dim=1)
    lex = candidate_scores(existing, cand, epsilon=EPS, lexicographic=True)
    assert [math.floor(v) for v in lex.tolist()] == [m + 1, m, m + 1, m]


def test_eigen_count_above_matches_eigvalsh_on_indefinite_matrices() -> None:
    """Inertia from LDL^T, including Bunch-Kaufman 2x2 pivots (one eigenvalue of each sign)."""
    gen_ = gen(130)
    pivots_2x2 = 0
    for trial in range(300):
        n = int(torch.randint(1, 30, (1,), generator=gen_))
        a = torch.randn(n, n, generator=gen_, dtype=torch.float64)
        g = a + a.T if trial % 2 else a.T @ a / n
        ev = torch.linalg.eigvalsh(g)
        t = float(ev[int(torch.randint(0, n, (1,), generator=gen_))]) + 1e-3  # thresholds among the eigenvalues
        pivots_2x2 += int((torch.linalg.ldl_factor(g - t * torch.eye(n, dtype=g.dtype))[1] < 0).sum())
        assert eigen_count_above(g, t) == int((ev > t).sum()), (trial, n, t)
    assert pivots_2x2 > 0  # the 2x2 branch was exercised
    assert eigen_count_above(torch.zeros(0, 0, dtype=torch.float64), 0.5) == 0


# --------------------------------------------------------------------------- candidate gaps
@pytest.mark.parametrize("rows,f", [(30, 12), (6, 40), (10, 10)], ids=["rows_gt_cols", "rows_lt_cols", "square"])
def test_candidate_gaps_columns_and_blocks(rows: int, f: int) -> None:
    existing = torch.relu(randn(rows, f, seed=100))
    cols = torch.cat([randn(rows, 3, seed=101), existing[:, :1], torch.zeros(rows, 1, dtype=torch.float64)], dim=1)
    got = candidate_gaps(existing, cols)
    expected = [ref_gap(torch.cat([existing, cols[:, i : i + 1]], dim=1)) for i in range(cols.shape[1])]
    assert got.shape == (cols.shape[1],)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-7)
    blocks = [randn(rows, 4, seed=102), torch.relu(randn(rows, 9, seed=103)), torch.zeros(rows, 4), existing[:, :4]]
    got = candidate_gaps(existing, blocks)
    expected = [ref_gap(torch.cat([existing, b.to(torch.float64)], dim=1)) for b in blocks]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-7)


def test_candidate_gaps_zero_cases() -> None:
    zero = torch.zeros(5, 3)
    assert candidate_gaps(zero, torch.zeros(5, 2)).tolist() == [1.0, 1.0]
    c = randn(5, 1, seed=104)
    assert candidate_gaps(zero, c).item() == pytest.approx(ref_gap(c), abs=1e-12)
    # orthonormal rows after stacking: gap 0
    q, _ = torch.linalg.qr(randn(8, 4, seed=105))
    s = q.T  # (4, 8), orthonormal rows
    assert candidate_gaps(s[:, :6], [s[:, 6:]]).item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- grow_count (eqs. 3, 5, 10)
def test_grow_count_code_and_paper_rounding_hand_computed() -> None:
    assert grow_count(64, 0.97, 64, "code") == (2, 62.0)
    add, thr = grow_count(64, 0.97, 64, "paper")
    assert add == 1
    assert thr == pytest.approx(62.08)
    # at or below the threshold: nothing, never negative (the max(0, .) form)
    for score in (62, 40, 0):
        assert grow_count(score, 0.97, 64, "code") == (0, 62.0)
        assert grow_count(score, 0.97, 64, "paper")[0] == 0
    assert grow_count(63, 0.97, 64, "code") == (1, 62.0)
    assert grow_count(63, 0.97, 64, "paper")[0] == 0  # floor(0.92)
    # integer base * M: the roundings agree
    for score, add in [(8, 4), (7, 3), (5, 1), (4, 0), (2, 0)]:
        assert grow_count(score, 0.5, 8, "code") == (add, 4.0)
        assert grow_count(score, 0.5, 8, "paper") == (add, 4.0)


def test_grow_count_float_products_round_correctly() -> None:
    assert 0.29 * 100 < 29  # 28.999999999999996
    assert grow_count(30, 0.29, 100, "code") == (1, 29.0)
    assert grow_count(29, 0.29, 100, "code") == (0, 29.0)
    assert grow_count(30, 0.29, 100, "paper")[0] == 1
    assert grow_count(29, 0.29, 100, "paper")[0] == 0
    assert grow_count(100, 0.29, 100, "code")[0] == 71 == grow_count(100, 0.29, 100, "paper")[0]
    for k in range(1, 101):  # base k/100 with M = 100: threshold exactly k under both roundings
        base = k / 100
        for score in (k - 1, k, k + 1, 100):
            want = max(0, score - k)
            assert grow_count(score, base, 100, "code") == (want, float(k)), (k, score)
            assert grow_count(score, base, 100, "paper")[0] == want, (k, score)


def test_grow_count_matches_exact_arithmetic_on_realistic_baselines() -> None:
    # base = gamma * s0 / M0 as the triggers compute it, threshold on the current width M
    for gamma in ("0.7", "0.9", "0.97", "0.99", "0.997", "1"):
        for m0 in (8, 10, 64, 100, 256):
            for s0 in sorted({1, m0 // 3, m0 // 2, m0 - 1, m0}):
                base = float(gamma) * s0 / m0
                exact_base = Fraction(gamma) * s0 / m0
                for width in (m0, m0 + 1, 2 * m0, 3 * m0 + 7):
                    exact = exact_base * width
                    for score in (0, math.floor(exact), math.floor(exact) + 1, width):
                        code = grow_count(score, base, width, "code")
                        assert code == (max(0, score - math.floor(exact)), float(math.floor(exact)))
                        paper = grow_count(score, base, width, "paper")
                        assert paper[0] == max(0, math.floor(score - exact))
                        assert paper[1] == pytest.approx(float(exact))


# --------------------------------------------------------------------------- trigger classes
def make_binding(
    trigger, hidden: int = 8, conv_model: bool = False, grow_to: int | None = None, activation: str = "modified_relu"
):
    model = models.mlp(64, (hidden,), 2, activation=activation)
    graph = archgrow.trace(model, torch.randn(1, 64))
    group = graph.group("hidden1")
    binding = GroupBinding(
        group=group,
        settings=Settings(trigger=trigger),
        origin={},
        initial_width=group.width,
        max_width=4 * group.width,
        producer=model.hidden1,
        producer_name="hidden1",
        conv_model=conv_model,
        probe=build_probe(graph, group),
    )
    if grow_to is not None and grow_to > group.width:
        archgrow.grow(graph, "hidden1", grow_to - group.width)
    return binding, graph, model


def set_weight_singular_values(model, s: list[float], seed: int = 0) -> None:
    """hidden1.weight (M x 64) with the given singular values after the 1/sqrt(64) scale."""
    w = model.hidden1.weight
    with torch.no_grad():
        w.copy_(with_singular_values(w.shape[0], w.shape[1], [v * 8.0 for v in s], seed=seed))


def test_trigger_registry() -> None:
    assert TRIGGERS["activation"] is ActivationRule
    assert TRIGGERS["weight"] is WeightRule
    assert TRIGGERS["linear_schedule"] is LinearRule
    assert TRIGGERS["batched_schedule"] is BatchedRule


def test_weight_rule_start_evaluate_and_running_max() -> None:
    cfg = WeightTrigger(running_max=True)
    binding, graph, model = make_binding(cfg)
    rule = WeightRule(cfg, binding)
    assert rule.running_max is True
    set_weight_singular_values(model, [1.0] * 4, seed=1)  # count 4 of 8
    rule.start(binding, None)
    assert rule.base == pytest.approx(0.99 * 4 / 8)
    set_weight_singular_values(model, [1.0] * 8, seed=2)  # full rank
    d = rule.evaluate(binding, 1, None)
    # threshold floor(0.495 * 8) = floor(3.96) = 3 from the OLD base; add 8 - 3
    assert d == Decision(5, 8, 3.0)
    assert (d.add, d.threshold) == grow_count(8, 0.99 * 4 / 8, 8, "code")
    assert rule.base == pytest.approx(0.99)  # raised after the threshold was used
    assert rule.evaluate(binding, 2, None) == Decision(1, 8, 7.0)  # floor(7.92) = 7
    # a lower score never lowers the base
    set_weight_singular_values(model, [1.0] * 2, seed=3)
    assert rule.evaluate(binding, 3, None) == Decision(0, 2, 7.0)
    assert rule.base == pytest.approx(0.99)


def test_weight_rule_without_running_max_keeps_the_base() -> None:
    cfg = WeightTrigger(running_max=False)
    binding, graph, model = make_binding(cfg)
    rule = WeightRule(cfg, binding)
    set_weight_singular_values(model, [1.0] * 4, seed=1)
    rule.start(binding, None)
    set_weight_singular_values(model, [1.0] * 8, seed=2)
    assert rule.evaluate(binding, 1, None) == Decision(5, 8, 3.0)
    assert rule.evaluate(binding, 2, None) == Decision(5, 8, 3.0)
    assert rule.base == pytest.approx(0.495)


def test_weight_rule_reads_the_live_width_after_growth() -> None:
    cfg = WeightTrigger(running_max=False)
    binding, graph, model = make_binding(cfg)
    rule = WeightRule(cfg, binding)
    rule.start(binding, None)  # default init: full rank (singular values of W/8 are ~0.07)
    assert rule.base == pytest.approx(0.99)
    assert rule.evaluate(binding, 1, None) == Decision(1, 8, 7.0)
    archgrow.grow(graph, "hidden1", 4)
    assert binding.width == 12
    score = weight_count(model.hidden1.weight)
    assert score == ref_weight_count(model.hidden1.weight)
    add, thr = grow_count(score, 0.99, 12, "code")
    assert thr == 11.0
    assert rule.evaluate(binding, 2, None) == Decision(add, score, thr)


def test_weight_rule_options() -> None:
    # paper rounding: threshold 3.96, add floor(8 - 3.96) = 4
    cfg = WeightTrigger(running_max=False, rounding="paper")
    binding, graph, model = make_binding(cfg)
    rule = WeightRule(cfg, binding)
    set_weight_singular_values(model, [1.0] * 4, seed=1)
    rule.start(binding, None)
    set_weight_singular_values(model, [1.0] * 8, seed=2)
    d = rule.evaluate(binding, 1, None)
    assert (d.add, d.score) == (4, 8)
    assert d.threshold == pytest.approx(3.96)
    # include_bias: a rank-2 weight plus a generic bias counts 3; without it 2
    for include, expected in [(False, 2), (True, 3)]:
        cfg = WeightTrigger(include_bias=include, gamma=0.5)
        binding, graph, model = make_binding(cfg)
        set_weight_singular_values(model, [1.0, 1.0], seed=4)
        with torch.no_grad():
            model.hidden1.bias.copy_(torch.linspace(-1, 1, 8))
        rule = WeightRule(cfg, binding)
        assert rule.count(binding) == expected
        assert rule.count(binding) == ref_weight_count(
            model.hidden1.weight, bias=model.hidden1.bias if include else None
        )
        rule.start(binding, None)
        assert rule.base == pytest.approx(0.5 * expected / 8)
    # epsilon
    cfg = WeightTrigger(epsilon=0.015)
    binding, graph, model = make_binding(cfg)
    set_weight_singular_values(model, STRADDLE, seed=5)
    assert WeightRule(cfg, binding).count(binding) == 2
    assert WeightRule(WeightTrigger(), binding).count(binding) == 3


@pytest.mark.parametrize("conv_model", [False, True])
def test_running_max_and_gamma_defaults_follow_conv_model(conv_model: bool) -> None:
    binding, _, _ = make_binding(ActivationTrigger(), conv_model=conv_model)
    act = ActivationRule(ActivationTrigger(), binding)
    assert act.gamma == (0.9 if conv_model else 0.97)
    assert act.running_max is conv_model
    assert act.scale == "samples"  # dense probe, scale "auto"
    weight = WeightRule(WeightTrigger(), binding)
    assert weight.running_max is conv_model
    assert weight.config.gamma == 0.99
    # explicit values win
    act = ActivationRule(ActivationTrigger(gamma=0.8, running_max=not conv_model, scale="channels"), binding)
    assert (act.gamma, act.running_max, act.scale) == (0.8, not conv_model, "channels")
    assert WeightRule(WeightTrigger(running_max=not conv_model), binding).running_max is (not conv_model)


def measurement(h: torch.Tensor) -> Measurement:
    return Measurement(torch.zeros(h.shape[0], 64), h.float(), h.float())


def test_activation_rule_start_and_evaluate() -> None:
    cfg = ActivationTrigger()  # gamma 0.97, no running max (dense model)
    binding, _, _ = make_binding(cfg)
    rule = ActivationRule(cfg, binding)
    n = 200
    h6 = with_singular_values(n, 8, [math.sqrt(n) * s for s in [1, 0.5, 0.3, 0.1, 0.05, 0.02]], seed=110)
    h8 = with_singular_values(n, 8, [math.sqrt(n) * s for s in [1, 0.5, 0.3, 0.1, 0.05, 0.02, 0.015, 0.012]], seed=111)
    h3 = with_singular_values(n, 8, [math.sqrt(n) * s for s in [1, 0.5, 0.02, 0.009, 0.001]], seed=112)
    assert [ref_count(h) for h in (h6, h8, h3)] == [6, 8, 3]
    rule.start(binding, None)
    assert rule.base is None  # no measurement: nothing to set
    rule.start(binding, measurement(h6))
    assert rule.base == pytest.approx(0.97 * 6 / 8)
    # threshold floor(0.7275 * 8) = floor(5.82) = 5
    assert rule.evaluate(binding, 1, measurement(h8)) == Decision(3, 8, 5.0)
    assert rule.evaluate(binding, 2, measurement(h6)) == Decision(1, 6, 5.0)
    assert rule.evaluate(binding, 3, measurement(h3)) == Decision(0, 3, 5.0)
    assert rule.base == pytest.approx(0.7275)
    # paper rounding: add floor(8 - 5.82) = 2
    cfg = ActivationTrigger(rounding="paper")
    state = rule.state_dict()  # the same baseline, under the other rounding
    rule = ActivationRule(cfg, binding)
    rule.load_state_dict(state)
    d = rule.evaluate(binding, 4, measurement(h8))
    assert (d.add, d.score) == (2, 8)
    assert d.threshold == pytest.approx(5.82)


def test_activation_rule_running_max_uses_the_old_base_for_the_threshold() -> None:
    cfg = ActivationTrigger(running_max=True)
    binding, _, _ = make_binding(cfg)
    rule = ActivationRule(cfg, binding)
    n = 200
    h4 = with_singular_values(n, 8, [math.sqrt(n)] * 4, seed=113)
    h8 = with_singular_values(n, 8, [math.sqrt(n)] * 8, seed=114)
    rule.start(binding, measurement(h4))
    assert rule.base == pytest.approx(0.97 * 4 / 8)
    assert rule.evaluate(binding, 1, measurement(h8)) == Decision(5, 8, 3.0)  # floor(3.88) = 3
    assert rule.base == pytest.approx(0.97)
    assert rule.evaluate(binding, 2, measurement(h8)) == Decision(1, 8, 7.0)  # floor(7.76) = 7
    assert rule.evaluate(binding, 3, measurement(h4)) == Decision(0, 4, 7.0)
    assert rule.base == pytest.approx(0.97)


def test_activation_rule_scale_and_gap_metric() -> None:
    n = 200
    # scaled by 1/sqrt(200): four values 0.005 < eps; by 1/sqrt(8) they are 0.025 > eps
    h = with_singular_values(n, 8, [math.sqrt(n) * s for s in [1, 1, 1, 1, 0.005, 0.005, 0.005, 0.005]], seed=115)
    binding, _, _ = make_binding(ActivationTrigger())
    assert ActivationRule(ActivationTrigger(), binding).count(binding, measurement(h)) == 4
    assert ActivationRule(ActivationTrigger(scale="samples"), binding).count(binding, measurement(h)) == 4
    assert ActivationRule(ActivationTrigger(scale="channels"), binding).count(binding, measurement(h)) == 8
    assert ref_count(h, EPS, "channels") == 8
    assert ActivationRule(ActivationTrigger(epsilon=0.004), binding).count(binding, measurement(h)) == 8
    # orthogonality-gap metric: ceil((1 - gap) * M) on the (samples, features) matrix
    hr = torch.relu(randn(30, 8, seed=116))
    cfg = ActivationTrigger(metric="orthogonality_gap")
    rule = ActivationRule(cfg, binding)
    expected = math.ceil((1 - ref_gap(hr)) * 8 - 1e-9)
    assert rule.count(binding, measurement(hr)) == expected
    rule.start(binding, measurement(hr))
    assert rule.base == pytest.approx(0.97 * expected / 8)


def test_activation_rule_on_a_real_measurement() -> None:
    cfg = ActivationTrigger()
    binding, graph, model = make_binding(cfg, activation="relu")
    x = torch.randn(300, 64, generator=gen(117))
    with measuring(model):
        m = measure(model, [binding.probe], [x])["hidden1"]
    assert binding.probe.point == "act1"
    torch.testing.assert_close(m.h, torch.relu(model.hidden1(x)).detach())
    rule = ActivationRule(cfg, binding)
    rule.start(binding, m)
    s = ref_count(as_matrix(m.h, binding.probe.channel_dim), EPS, "samples")
    assert s == 8
    assert rule.base == pytest.approx(0.97 * s / 8)
    add, thr = grow_count(s, 0.97 * s / 8, 8, "code")
    assert (add, thr) == (1, 7.0)  # floor(7.76) = 7
    assert rule.evaluate(binding, 1, m) == Decision(add, s, thr)


def test_probe_of_default_mlp_measures_post_activation() -> None:
    binding, _, _ = make_binding(ActivationTrigger())  # activation="modified_relu", the default
    assert binding.probe.chain, "probe ends at the Linear output (pre-activation), not after the activation"


# --------------------------------------------------------------------------- schedules
def exact_linear(step: int, width: int, initial: int, final: int, total: int, frac: str) -> tuple[int, Fraction]:
    p = min(Fraction(1), Fraction(step) / (total * Fraction(frac)))
    target = initial + (final - initial) * p
    return (1 if width < target and width < final else 0), target


def exact_batched(step: int, width: int, initial: int, final: int, total: int, frac: str, stages: int):
    p = min(Fraction(1), Fraction(step) / (total * Fraction(frac)))
    span = final - initial
    batch = span // stages
    stage = initial + math.floor(math.floor(stages * p) * Fraction(span, stages))
    return (batch if batch > 0 and width < stage and width + batch <= final else 0), stage


def test_linear_schedule_hand_computed() -> None:
    cfg = LinearSchedule(initial_width=64, final_width=256, total_steps=100)
    assert cfg.grow_fraction == 0.75
    binding, graph, _ = make_binding(cfg, hidden=64)
    rule = LinearRule(cfg, binding)
    assert (rule.initial, rule.final) == (64, 256)
    assert binding.group.step == 1
    assert rule.evaluate(binding, 0, None) == Decision(0, 64, 64.0)
    d = rule.evaluate(binding, 1, None)
    assert (d.add, d.score) == (1, 64)
    assert d.threshold == pytest.approx(64 + 192 / 75)
    assert rule.evaluate(binding, 75, None) == Decision(1, 64, 256.0)
    assert rule.evaluate(binding, 100, None) == Decision(1, 64, 256.0)  # progress capped at 1
    assert rule.evaluate(binding, 1000, None) == Decision(1, 64, 256.0)
    archgrow.grow(graph, "hidden1", 64)  # width 128 = the ramp at step 25
    assert rule.evaluate(binding, 25, None) == Decision(0, 128, 128.0)
    assert rule.evaluate(binding, 26, None).add == 1  # ramp 130.56
    assert rule.evaluate(binding, 24, None).add == 0
    archgrow.grow(graph, "hidden1", 127)  # width 255
    assert rule.evaluate(binding, 100, None) == Decision(1, 255, 256.0)
    archgrow.grow(graph, "hidden1", 1)  # width 256 = final
    assert rule.evaluate(binding, 100, None) == Decision(0, 256, 256.0)
    archgrow.grow(graph, "hidden1", 10)  # beyond final: never grows
    assert rule.evaluate(binding, 100, None).add == 0


@pytest.mark.parametrize("width", [64, 65, 100, 128, 192, 255, 256])
def test_linear_schedule_matches_exact_ramp(width: int) -> None:
    cfg = LinearSchedule(initial_width=64, final_width=256, total_steps=100)
    binding, _, _ = make_binding(cfg, hidden=64, grow_to=width)
    rule = LinearRule(cfg, binding)
    for step in range(0, 101):
        add, target = exact_linear(step, width, 64, 256, 100, "0.75")
        d = rule.evaluate(binding, step, None)
        assert (d.add, d.score) == (add, width), step
        assert d.threshold == pytest.approx(float(target))


def test_linear_schedule_defaults_from_the_binding() -> None:
    cfg = LinearSchedule(final_width="4x", total_steps=100)
    binding, _, _ = make_binding(cfg, hidden=64)
    rule = LinearRule(cfg, binding)
    assert (rule.initial, rule.final) == (64, 256)
    cfg = LinearSchedule(initial_width=32, final_width=96, total_steps=10, grow_fraction=0.5)
    rule = LinearRule(cfg, binding)  # width 64 = the ramp at step 2.5
    assert rule.evaluate(binding, 2, None) == Decision(0, 64, 57.6)
    assert rule.evaluate(binding, 3, None) == Decision(1, 64, 70.4)


def test_linear_schedule_does_not_overshoot_an_exact_integer_target() -> None:
    # total 12 steps, grow_fraction 0.7: window 8.4, step 7 -> p = 5/6 and target 64 + 160 = 224 exactly
    cfg = LinearSchedule(initial_width=64, final_width=256, total_steps=12, grow_fraction=0.7)
    binding, _, _ = make_binding(cfg, hidden=64, grow_to=224)
    assert exact_linear(7, 224, 64, 256, 12, "0.7") == (0, Fraction(224))
    assert LinearRule(cfg, binding).evaluate(binding, 7, None).add == 0


def test_batched_schedule_hand_computed() -> None:
    cfg = BatchedSchedule(initial_width=64, final_width=256, total_steps=100)
    assert (cfg.stages, cfg.grow_fraction) == (8, 0.75)
    binding, graph, _ = make_binding(cfg, hidden=64)
    rule = BatchedRule(cfg, binding)
    for step in range(0, 10):  # p < 1/8 before step ceil(75/8) = 10
        assert rule.evaluate(binding, step, None) == Decision(0, 64, 64.0), step
    assert rule.evaluate(binding, 10, None) == Decision(24, 64, 88.0)
    assert rule.evaluate(binding, 19, None) == Decision(24, 64, 112.0)  # floor(8*19/75) = 2
    assert rule.evaluate(binding, 75, None) == Decision(24, 64, 256.0)  # one batch per call
    assert rule.evaluate(binding, 100, None) == Decision(24, 64, 256.0)
    archgrow.grow(graph, "hidden1", 24)  # width 88
    assert rule.evaluate(binding, 10, None) == Decision(0, 88, 88.0)
    assert rule.evaluate(binding, 18, None) == Decision(0, 88, 88.0)  # floor(8*18/75) = 1
    assert rule.evaluate(binding, 19, None) == Decision(24, 88, 112.0)
    archgrow.grow(graph, "hidden1", 144)  # width 232
    assert rule.evaluate(binding, 75, None) == Decision(24, 232, 256.0)  # 232 + 24 = 256 <= 256
    archgrow.grow(graph, "hidden1", 8)  # width 240: a batch would pass 256
    assert rule.evaluate(binding, 75, None) == Decision(0, 240, 256.0)
    archgrow.grow(graph, "hidden1", 16)  # width 256
    assert rule.evaluate(binding, 100, None) == Decision(0, 256, 256.0)


@pytest.mark.parametrize(
    "initial,final,total,frac,stages",
    [(64, 256, 100, "0.75", 8), (64, 256, 100, "0.3", 10), (64, 256, 12, "0.7", 8), (16, 20, 40, "0.25", 8)],
)
def test_batched_schedule_matches_exact_stages(initial: int, final: int, total: int, frac: str, stages: int) -> None:
    cfg = BatchedSchedule(
        initial_width=initial, final_width=final, total_steps=total, grow_fraction=float(frac), stages=stages
    )
    span = final - initial
    for width in sorted(
        {initial, initial + span // stages, initial + span // 3, final - span // stages, final - 1, final}
    ):
        binding, _, _ = make_binding(cfg, hidden=initial, grow_to=width)
        rule = BatchedRule(cfg, binding)
        for step in range(0, total + 2):
            add, stage = exact_batched(step, width, initial, final, total, frac, stages)
            d = rule.evaluate(binding, step, None)
            assert (d.add, d.score, d.threshold) == (add, width, float(stage)), (width, step)


def test_batched_schedule_float_window_hits_stage_boundaries() -> None:
    # window 100 * 0.3 = 30.000000000000004 in floating point; stage j starts at step 3j exactly
    cfg = BatchedSchedule(initial_width=64, final_width=256, total_steps=100, grow_fraction=0.3, stages=10)
    binding, _, _ = make_binding(cfg, hidden=64)
    rule = BatchedRule(cfg, binding)
    assert rule.evaluate(binding, 2, None) == Decision(0, 64, 64.0)
    assert rule.evaluate(binding, 3, None) == Decision(19, 64, 83.0)  # floor(192/10) = 19
    assert rule.evaluate(binding, 30, None) == Decision(19, 64, 256.0)
    # span smaller than stages: batch 0, never grows
    cfg = BatchedSchedule(initial_width=64, final_width=70, total_steps=10, stages=8)
    rule = BatchedRule(cfg, binding)
    assert all(rule.evaluate(binding, s, None).add == 0 for s in range(12))
