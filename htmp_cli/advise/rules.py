"""The published per-layer rules, as functions of alphas and sizes (`../shared/research-actions.md`).

Each takes the alphas of the units it allocates (layers, or blocks whose alphas were averaged) and
returns their settings with the method's budget and bounds held. Nothing here knows a report: the
rules can be checked against the papers' equations with plain arrays.
"""

from __future__ import annotations

import math

import numpy as np

from htmp_cli.errors import OptionError


def linear_map(alphas: np.ndarray, low: float, high: float) -> np.ndarray:
    """`np.interp(alpha, [alpha_min, alpha_max], [low, high])`: TempBalance's lr factors
    (low 0.5, high 1.5) and AlphaDecay's weight-decay factors (0.6666, 3). Equal alphas (or one
    unit) carry no ranking: every unit gets the neutral factor 1."""
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.size == 0:
        return alphas.copy()
    lo, hi = float(alphas.min()), float(alphas.max())
    if hi == lo:
        return np.ones_like(alphas)
    return low + (high - low) * (alphas - lo) / (hi - lo)


def alpha_pruning(alphas: np.ndarray, sizes: np.ndarray, sparsity: float, epsilon: float,
                  max_sparsity: float = 1.0) -> np.ndarray:
    """AlphaPruning's layer sparsities: r = 1 - eps + 2 eps (alpha - min) / (max - min), scaled so
    that the parameter-weighted mean sparsity is `sparsity` (lighter tails are pruned more).

    The scaled r can exceed 1 at high sparsity (eps 0.3 at 0.9 asks 1.17 of the lightest tail).
    Sparsities are capped at `max_sparsity` and what the capped layers cannot take is spread over
    the others in proportion to their r, so the budget still holds exactly.
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    if not 0.0 <= epsilon < 1.0:
        raise OptionError(f"epsilon {epsilon} must lie in [0, 1): the ratios 1 - eps must stay positive")
    if not 0.0 <= sparsity <= max_sparsity <= 1.0:
        raise OptionError(f"sparsity {sparsity} must lie in [0, max sparsity {max_sparsity}] and that in [0, 1]")
    return _scaled_to_budget(linear_map(alphas, 1.0 - epsilon, 1.0 + epsilon), sizes, sparsity, max_sparsity)


def _scaled_to_budget(ratios: np.ndarray, sizes: np.ndarray, target: float, cap: float) -> np.ndarray:
    """c * ratios with sum(sizes * result) = target * sum(sizes), capped at `cap`: water-filling,
    each round fixing the units that the scale would push past the cap."""
    result = np.zeros_like(ratios)
    free = np.ones(ratios.shape, dtype=bool)
    budget = target * float(sizes.sum())
    while free.any():
        weight = float((sizes[free] * ratios[free]).sum())
        if weight <= 0.0:
            result[free] = 0.0 if budget <= 0 else cap
            break
        scale = budget / weight
        over = free & (ratios * scale > cap)
        if not over.any():
            result[free] = ratios[free] * scale
            break
        result[over] = cap
        budget -= cap * float(sizes[over].sum())
        free &= ~over
    return result


def alpha_lora(alphas: np.ndarray, total: int, power: float, minimum: int = 1) -> np.ndarray:
    """AlphaLoRA's allocation: n = T alpha^b / sum alpha^b, rounded so that the n sum to T exactly
    (largest remainders) with every unit given at least `minimum`."""
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.size == 0:
        return np.zeros(0, dtype=np.int64)
    if total < minimum * alphas.size:
        raise OptionError(f"a total of {total} cannot give {alphas.size} units at least {minimum} each")
    weights = alphas**power
    return _rounded_to_total(total * weights / weights.sum(), total, minimum)


def _rounded_to_total(ideal: np.ndarray, total: int, minimum: int) -> np.ndarray:
    counts = np.maximum(np.floor(ideal).astype(np.int64), minimum)
    while counts.sum() < total:
        counts[int(np.argmax(ideal - counts))] += 1
    while counts.sum() > total:  # the floor can overshoot: take back where it gave most, never below it
        excess = np.where(counts > minimum, counts - ideal, -np.inf)
        counts[int(np.argmax(excess))] -= 1
    return counts


def alpha_q(alphas: np.ndarray, variances: np.ndarray, sizes: np.ndarray, average_bits: float,
            widths: tuple[int, ...], gamma: float = 1.0) -> np.ndarray:
    """AlphaQ's bit widths: one width per unit minimising sum n s v 2^(-2b), with
    s = (median alpha / alpha)^gamma and v the weights' mean square (their variance, about a zero
    mean), under the parameter-weighted
    mean width <= `average_bits` (for units of equal size, AlphaQ's own program). Solved exactly
    as a mixed-integer program; heavier tails (lower alpha) get more bits."""
    alphas = np.asarray(alphas, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    variances = np.asarray(variances, dtype=np.float64)
    widths = tuple(sorted(set(int(w) for w in widths)))
    if alphas.size == 0:
        return np.zeros(0, dtype=np.int64)
    if average_bits < widths[0]:
        raise OptionError(f"an average of {average_bits} bits is below the smallest width, {widths[0]}")
    if average_bits >= widths[-1]:
        return np.full(alphas.size, widths[-1], dtype=np.int64)
    from scipy.optimize import Bounds, LinearConstraint, milp

    sensitivity = (float(np.median(alphas)) / alphas) ** gamma
    units, choices = alphas.size, len(widths)
    bits = np.array(widths, dtype=np.float64)
    cost = (sizes * sensitivity * variances)[:, None] * 2.0 ** (-2.0 * bits)[None, :]
    cost = cost / max(float(cost.max()), np.finfo(float).tiny)  # weights span decades; HiGHS's tolerances are absolute
    share = sizes / sizes.sum()
    one_each = np.kron(np.eye(units), np.ones(choices))
    width_used = (share[:, None] * bits[None, :]).ravel()
    constraints = [LinearConstraint(one_each, 1, 1), LinearConstraint(width_used[None, :], -np.inf, average_bits)]
    solved = milp(cost.ravel(), constraints=constraints, integrality=np.ones(units * choices),
                  bounds=Bounds(0, 1))
    if not solved.success:  # cannot happen when average_bits >= the smallest width; say so if it does
        raise OptionError(f"the bit allocation could not be solved: {solved.message}")
    chosen = solved.x.reshape(units, choices).argmax(axis=1)
    return np.array([widths[k] for k in chosen], dtype=np.int64)


def neutral_width(average_bits: float, widths: tuple[int, ...]) -> int:
    """The neutral width of a unit without a fit: the largest allowed width within the average, so
    that units without a fit never spend more than their share of the budget."""
    return max(w for w in widths if w <= average_bits)


def equal_shares(total: int, units: int) -> np.ndarray:
    """`total` split as evenly as whole numbers allow (the first units take the remainder)."""
    return np.array([total // units + (1 if k < total % units else 0) for k in range(units)], dtype=np.int64)


def uniform_share(total: int, units: int) -> int:
    """The neutral rank of a unit without a fit: its equal share of the total, rounded half up."""
    return max(1, math.floor(total / units + 0.5)) if units else 0
