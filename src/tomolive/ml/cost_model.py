"""When does the surrogate pay off? A cost model of the retraining loop, in the spirit of
Liu et al., "Bridging Data Center AI Systems with Edge Computing for Actionable Information
Retrieval" (XLOOP 2021, eqs. 1-5).

The paper's own equations could not be retrieved here, so this is the natural model they
describe, derived from the loop's steps; every constant is measured on the running cluster
(:func:`calibrate` in bench/bragg_loop.py), none is assumed. For a scan of ``N`` samples
(peaks) on ``W`` data-centre workers:

1. conventional: fit every sample, ``T_conv(N) = o_fit + N * c_fit``
   (``c_fit`` wall seconds per sample on the cluster, i.e. core-seconds / W; ``o_fit`` the
   scheduling overhead);
2. labelling a fraction ``f``: ``T_label(N) = o_fit + f N * c_fit``;
3. training on the labelled part (all but the held-out share ``h``) for ``E`` epochs:
   ``T_train(N) = o_train + E (1 - h) f N * c_step``; the held-out share is labelled while
   training runs: on a worker of its own (``overlap``) only the longer of the two counts; on
   one of the labelling workers they add up (measured on 2 workers: the overlap gained nothing);
4. transfer: patches to the data centre and the model back (``bytes / bandwidth`` plus one
   publish and one load of the registry, ``o_transfer``);
5. surrogate: ``T_ml(N) = T_label((1-h) f N) + [T_train (+|max) T_label(h f N)] + T_transfer +
   N * c_infer`` (inference of every sample at the edge). The surrogate is chosen when
   ``T_ml(N) < T_conv(N)``; without a retrain (a model that still fits) ``T_ml = N c_infer``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import BadInputError


@dataclass(frozen=True)
class CostConstants:
    """Measured constants (seconds; bytes per second for ``bandwidth``)."""

    c_fit: float  # wall s per fitted sample on the cluster
    o_fit: float  # fixed cost of one fitting job on the cluster
    c_infer: float  # s per sample of surrogate inference at the edge
    c_step: float  # s per sample-epoch of training on one data-centre worker
    o_train: float  # fixed cost of one training task (shipping the model, starting)
    o_transfer: float  # publishing to and loading from the registry
    bandwidth: float  # bytes/s from the edge to the data centre
    sample_bytes: int  # bytes of one sample (an 11x11 float32 patch: 484)
    workers: int
    overlap: bool = False  # training has a worker of its own (a GPU), so labelling goes on beside it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """The fractions and budget of one retrain."""

    label_fraction: float = 0.25
    held_out: float = 0.2
    epochs: int = 4

    def __post_init__(self) -> None:
        if not (0 < self.label_fraction <= 1 and 0 < self.held_out < 1 and self.epochs >= 1):
            raise BadInputError(f"Plan: expected 0 < label_fraction <= 1, 0 < held_out < 1, epochs >= 1; got {self!r}")


@dataclass(frozen=True)
class Prediction:
    """Predicted seconds of each path for a scan of ``n`` samples, the choice and why."""

    n: int
    conventional: float
    surrogate: float
    parts: dict[str, float]
    choice: str
    why: str


def conventional(n: int, k: CostConstants) -> float:
    """Eq. 1: fit all ``n`` samples on the cluster."""
    return k.o_fit + n * k.c_fit


def labelling(n: float, k: CostConstants) -> float:
    """Eq. 2: fit ``n`` samples (a fraction of the scan)."""
    return k.o_fit + n * k.c_fit


def training(n_train: float, epochs: int, k: CostConstants) -> float:
    """Eq. 3: ``epochs`` over ``n_train`` labelled samples on one worker."""
    return k.o_train + epochs * n_train * k.c_step


def transfer(n_labelled: float, k: CostConstants) -> float:
    """Eq. 4: the labelled patches to the data centre, the model through the registry."""
    return k.o_transfer + n_labelled * k.sample_bytes / k.bandwidth


def surrogate_parts(n: int, k: CostConstants, plan: Plan, retrain: bool = True) -> dict[str, float]:
    """Eq. 5's terms (seconds) for a scan of ``n`` samples."""
    labelled = plan.label_fraction * n
    n_train, n_held = (1 - plan.held_out) * labelled, plan.held_out * labelled
    parts = {"infer": n * k.c_infer}
    if retrain:
        parts["label"] = labelling(n_train, k)
        train, held = training(n_train, plan.epochs, k), labelling(n_held, k)
        parts["train_and_label_held_out"] = max(train, held) if k.overlap else train + held
        parts["transfer"] = transfer(labelled, k)
    return parts


def predict(n: int, k: CostConstants, plan: Plan | None = None, retrain: bool = True) -> Prediction:
    """Eq. 5: both paths for a scan of ``n`` samples, which is faster, and why."""
    if n < 1:
        raise BadInputError(f"n: expected a positive number of samples, got {n!r}")
    plan = plan or Plan()
    parts = surrogate_parts(n, k, plan, retrain)
    surrogate, fit = sum(parts.values()), conventional(n, k)
    choice = "surrogate" if surrogate < fit else "fit"
    why = (
        f"{n} samples: surrogate {surrogate:.1f} s ({', '.join(f'{p} {v:.1f}' for p, v in parts.items())}) vs fit "
        f"{fit:.1f} s; break-even at {break_even(k, plan, retrain)} samples"
    )
    return Prediction(n, fit, surrogate, parts, choice, why)


def break_even(k: CostConstants, plan: Plan | None = None, retrain: bool = True) -> int | None:
    """Smallest scan (samples) for which the surrogate is predicted faster; None if never (up to 10^9)."""
    plan = plan or Plan()

    def faster(n: int) -> bool:
        return sum(surrogate_parts(n, k, plan, retrain).values()) < conventional(n, k)

    low, high = 1, 10**9
    if not faster(high):
        return None
    while low < high:  # the surrogate's advantage grows with n: bisect
        mid = (low + high) // 2
        low, high = (low, mid) if faster(mid) else (mid + 1, high)
    return low
