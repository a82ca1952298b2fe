"""The generated binary classification task of Maile et al. (2022).

"When, where and how to add new neurons to ANNs" (AutoML Conf 2022, appendix B.1.1) uses this task
because its effective dimensionality is known exactly: only ``n_independent`` of the features carry
independent information, the rest are fixed linear mixtures of them. A growth method that measures
orthogonality (NORTH*) should therefore stop adding neurons near that dimension, which makes the task
a cheap, offline check of growth triggers.
"""

from __future__ import annotations

import torch

from archgrow.data.split import DataSplit, n_test_samples

__all__ = ["generated"]


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"generated(): {name}={value!r} is not accepted; it must be an integer >= {minimum}")
    return value


def generated(
    n_independent: int,
    *,
    n_samples: int = 5000,
    n_features: int = 64,
    test_frac: float = 0.2,
    noise: float = 0.1,
    seed: int = 1337,
) -> DataSplit:
    """Make the task with ``n_independent`` informative features out of ``n_features``.

    Follows the authors' code (``getsimdata`` in k8lion/Neurogenesis, which also seeds with 1337):
    the first ``n_independent`` features are i.i.d. N(0, 1); the others are ``R @ x[:n_independent]``
    with one N(0, 1) matrix ``R`` shared by all samples. The score is ``(1 - noise) * sum(x) + noise * N(0, 1)``
    (0.9 and 0.1 by default) and the label is 1 where the score exceeds its mean over all samples, so
    the classes are roughly balanced.

    The split is not shuffled: the first ``1 - test_frac`` of the samples train and the last ``test_frac``
    test, as in the code (80/20). The paper's text says 10% test; pass ``test_frac=0.1`` for that.
    The numbers differ from the Julia original (a different RNG), the distribution is the same.
    All randomness comes from a private ``torch.Generator`` so the global RNG is left alone.
    """
    n_features = _check_int("n_features", n_features, 1)
    n_samples = _check_int("n_samples", n_samples, 2)
    if isinstance(n_independent, bool) or not isinstance(n_independent, int) or not 1 <= n_independent <= n_features:
        raise ValueError(
            f"generated(): n_independent={n_independent!r} is not accepted; it must be an integer with "
            f"1 <= n_independent <= n_features ({n_features})"
        )
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0.0 <= noise <= 1.0:
        raise ValueError(f"generated(): noise={noise!r} is not accepted; it must be a number with 0 <= noise <= 1")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"generated(): seed={seed!r} is not accepted; it must be an integer")
    n_test = n_test_samples(n_samples, test_frac, what="generated()")

    generator = torch.Generator().manual_seed(seed)
    independent = torch.randn(n_samples, n_independent, generator=generator, dtype=torch.float32)
    if n_independent < n_features:
        mixing = torch.randn(n_features - n_independent, n_independent, generator=generator, dtype=torch.float32)
        x = torch.cat([independent, independent @ mixing.T], dim=1)
    else:
        x = independent
    score = (1.0 - noise) * x.sum(dim=1) + noise * torch.randn(n_samples, generator=generator, dtype=torch.float32)
    y = (score > score.mean()).long()

    n_train = n_samples - n_test
    name = f"generated(n_independent={n_independent}, n_features={n_features}, n_samples={n_samples}, seed={seed})"
    return DataSplit.from_tensors(x[:n_train], y[:n_train], x[n_train:], y[n_train:], name)
