"""Singular values and vectors of the auxiliary gradient, cheaply and robustly.

``G`` is wide or tall (fan-out x fan-in of a new unit), so the smaller Gram matrix is factorised;
LAPACK failures fall back to a plain SVD, and non-finite entries are an error with a cause.
"""

from __future__ import annotations

import torch

from archgrow.errors import ArchgrowError


class BridgeError(ArchgrowError):
    """The auxiliary gradient of a group cannot be formed or factorised (the grower names the group)."""


def thin_svd(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD via ``eigh`` of the smaller Gram matrix (cheaper than ``svd`` for tall or wide ``g``).

    LAPACK's divide-and-conquer ``eigh`` can fail to converge on a Gram matrix with clustered
    eigenvalues (seen on an MNIST-size MLP's auxiliary gradient with GradMax growing every step);
    ``svd`` of ``g`` itself is then used.
    """
    _check_finite(g)
    rows, cols = g.shape
    try:
        if rows <= cols:
            evals, u = torch.linalg.eigh(g @ g.T)
            evals, u = evals.flip(0), u.flip(1)
            s = evals.clamp_min(0).sqrt()
            v = (g.T @ u) / s.clamp_min(torch.finfo(g.dtype).tiny)
        else:
            evals, v = torch.linalg.eigh(g.T @ g)
            evals, v = evals.flip(0), v.flip(1)
            s = evals.clamp_min(0).sqrt()
            u = (g @ v) / s.clamp_min(torch.finfo(g.dtype).tiny)
        return u, s, v
    except torch.linalg.LinAlgError:
        pass
    try:
        u, s, vh = torch.linalg.svd(g, full_matrices=False)
    except torch.linalg.LinAlgError as exc:
        raise BridgeError(f"the SVD of the auxiliary gradient ({rows} x {cols}) did not converge: {exc}") from None
    return u, s, vh.T


def singular_values(g: torch.Tensor) -> torch.Tensor:
    """Singular values of ``g``, descending, from the smaller Gram matrix (``svdvals`` if that fails)."""
    _check_finite(g)
    gram = g @ g.T if g.shape[0] <= g.shape[1] else g.T @ g
    try:
        return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0).sqrt()
    except torch.linalg.LinAlgError:
        pass
    try:
        return torch.linalg.svdvals(g)
    except torch.linalg.LinAlgError as exc:
        raise BridgeError(f"the singular values of the auxiliary gradient {tuple(g.shape)} did not converge: {exc}") from None


def _check_finite(g: torch.Tensor) -> None:
    if not bool(torch.isfinite(g).all()):
        raise BridgeError(
            "the auxiliary gradient has NaN or infinite entries (the loss or the weights diverged in this step); "
            "lower the learning rate or check the inputs"
        )


__all__ = ["BridgeError", "singular_values", "thin_svd"]
