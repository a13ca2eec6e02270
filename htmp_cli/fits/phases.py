"""The 5+1 phases of training (Martin and Mahoney, JMLR 2021), as explicit rules with their numbers.

Rules are tried in order; the first that holds names the phase, and the result keeps the rule and
the numbers that decided it. Every threshold is a field of `PhaseThresholds` (documented defaults,
overridable from the command line). A layer no rule claims gets the nearest phase where one is
near by a stated measure (spikes past a gap: bulk+spikes; spikes with no gap: bulk-decay), marked
as a fallback, and is "unclassified" with its numbers otherwise; never random-like by default, since
a gate treats random-like as untrained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING

import numpy as np

from htmp_cli.errors import OptionError

if TYPE_CHECKING:  # the fits import scipy; the options (and `htmp ls`) need only the thresholds
    from htmp_cli.fits.htmp import HTMPFit
    from htmp_cli.fits.tailtests import Comparison
    from htmp_cli.fits.mp import MPFit
    from htmp_cli.fits.powerlaw import PowerLawFit

PHASES = ("random-like", "bleeding-out", "bulk+spikes", "bulk-decay", "heavy-tailed", "rank-collapse")
# What a layer is called when no rule holds and nothing is near enough to name: its numbers say the rest.
UNCLASSIFIED = "unclassified"
PHASE_LABELS = PHASES + (UNCLASSIFIED,)


@dataclass(frozen=True)
class PhaseThresholds:
    """Every number the phase rules use (math.md section 7, calibrated on synthetic layers)."""

    rank_loss_fraction: float = 0.10  # rank-collapse: rank loss above this share of M
    tiny_fraction: float = 0.05  # ... or more than this share of eigenvalues
    tiny_edge_fraction: float = 0.01  # ... below this fraction of the MP lower edge
    heavy_lambda_ratio: float = 2.0  # heavy-tailed: lambda_max above this many l+
    heavy_ks_mp: float = 0.05  # ... and every eigenvalue this far (KS) from MP (math.md: 0.1; calibrated)
    tail_ks_max: float = 0.1  # ... with an accepted tail fit: D at most this
    tail_min_size: int = 50  # ... on at least this many eigenvalues
    alpha_heavy: float = 4.0  # ... and alpha below this
    alpha_very_heavy: float = 2.0  # "very heavy-tailed" below this
    alpha_random: float = 6.0  # alpha above this looks random
    decay_ks_mp: float = 0.05  # bulk-decay: MP fit this poor (KS of every eigenvalue)
    decay_excess_fraction: float = 0.03  # ... with more than this share in (l+, 2 l+]
    good_bulk_ks: float = 0.05  # a good MP bulk: KS of the bulk below this
    spikes_max_fraction: float = 0.05  # bulk+spikes: at most this share of M are spikes
    spikes_excess_fraction: float = 0.015  # ... and, without a gap, at most this share in (l+, 2 l+]
    gap_tw: float = 8.0  # a gap: smallest spike this many Tracy-Widom scales above the bulk's top
    bleed_lambda_ratio: float = 1.2  # bleeding-out: lambda_max below this many l+
    kappa_random: float = 50.0  # random-like: HTMP kappa above this
    # The HTMP view (see `htmp_view`): heavy-tailed below this kappa, bulk-decay from it to kappa_random.
    # Between the HTMP paper's Figure 2 anchors, kappa 1.9 (heavy-tailed) and 5.5 (bulk-decay); calibrated
    # (benchmarks/calibrate_phases.py, seed 1000): their geometric mean, 3.23, left 9 of 40 Student-t
    # matrices bulk-decay, 4.0 left 4, while keeping 38 of 40 bulk-decay matrices and 39 of 40 HTMP
    # kappa-5.5 spectra bulk-decay.
    kappa_heavy: float = 4.0

    @classmethod
    def from_mapping(cls, values: dict[str, object]) -> "PhaseThresholds":
        known = {f.name: f.type for f in fields(cls)}
        for key, value in values.items():
            if key not in known:
                raise OptionError(f"unknown phase threshold {key!r} (known: {', '.join(sorted(known))})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise OptionError(f"phase threshold {key!r} must be a non-negative number, got {value!r}")
        return cls(**{k: (int(v) if k == "tail_min_size" else float(v)) for k, v in values.items()})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PhaseResult:
    """A layer's phase. `phase` is the headline, the power-law view: Martin and Mahoney's rules, on
    alpha bands and the MP bulk. `htmp_phase` is the HTMP view (None without an HTMP fit)."""

    phase: str
    rule: str  # which rule fired ("fallback: ..." when none did)
    very_heavy: bool
    evidence: dict[str, float | int | None]
    summary: str  # the short reason shown in the table
    htmp_phase: str | None = None

    @property
    def views_agree(self) -> bool | None:
        return None if self.htmp_phase is None else self.htmp_phase == self.phase


MP_FAMILY = ("random-like", "bleeding-out", "bulk+spikes")


def htmp_view(headline: str, kappa: float | None, t: PhaseThresholds = PhaseThresholds()) -> str | None:
    """The phase as the HTMP paper's Figure 2 draws the 5+1 phases with HTMP densities: kappa =
    infinity (MP) for random-like, bleeding-out and bulk+spikes, kappa 5.5 bulk-decay, 1.9
    heavy-tailed, 1e-3 rank-collapse. Rank collapse (a mass at zero) and the MP family's three
    phases, which kappa cannot tell apart (they differ in the spikes an MP bulk carries, and spikes
    drag the kappa of the whole spectrum down), are read as the headline reads them; otherwise kappa
    decides: heavy-tailed below kappa_heavy, bulk-decay below kappa_random, random-like above.

    The bands are on kappa itself at every aspect ratio: the law's variance is gamma (1 + 2 / kappa),
    so its excess over Marchenko-Pastur's, 2 / kappa, does not depend on gamma."""
    if headline == "rank-collapse":  # a mass at zero, with or without an HTMP fit of what is left
        return headline
    if kappa is None:
        return None
    if headline in MP_FAMILY:
        return headline
    if kappa < t.kappa_heavy:
        return "heavy-tailed"
    if kappa < t.kappa_random:
        return "bulk-decay"
    return "random-like"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def exponential_tail(result: PhaseResult, comparison: "Comparison") -> PhaseResult:
    """A heavy-tailed headline whose tail the likelihood-ratio tests (--alternatives) find better
    explained by an exponential (R < 0, p < 0.1): not heavy-tailed but a tail decaying out of the
    bulk, bulk-decay. The rule and the reason say why; the HTMP view is left as it was."""
    evidence = {**result.evidence, "R_exponential": comparison.normalized_R, "p_exponential": comparison.p_value}
    summary = (f"bulk-decay: the tail is better explained by an exponential (R {_fmt(comparison.normalized_R)}, "
               f"p {_fmt(comparison.p_value)}) than by its power law ({result.summary.partition(': ')[2]})")
    return replace(result, phase="bulk-decay", rule="exponential tail, not a power law", very_heavy=False,
                   evidence=evidence, summary=summary)


def classify(eigenvalues: np.ndarray, M: int, rank_loss: int, power_law: PowerLawFit | None,
             mp: MPFit, htmp: HTMPFit | None, t: PhaseThresholds = PhaseThresholds(),
             htmp_kappa: float | None = None) -> PhaseResult:
    """The phase of one layer from its spectrum and fits, in both views: the headline (the power-law
    view) and the HTMP view (`htmp_view`) from `htmp_kappa`, the better orientation's kappa (by
    default the direct fit's)."""
    headline = _classify(eigenvalues, M, rank_loss, power_law, mp, htmp, t)
    if htmp_kappa is None and htmp is not None and htmp.status == "success":
        htmp_kappa = htmp.kappa
    view = htmp_view(headline.phase, htmp_kappa, t)
    summary = headline.summary
    if view is not None and view != headline.phase:
        summary = f"{summary}; HTMP view: {view} (kappa {_fmt(htmp_kappa)})"
    return replace(headline, htmp_phase=view, summary=summary)


def _classify(eigenvalues: np.ndarray, M: int, rank_loss: int, power_law: PowerLawFit | None,
              mp: MPFit, htmp: HTMPFit | None, t: PhaseThresholds) -> PhaseResult:
    values = np.sort(eigenvalues)
    lambda_max = float(values[-1])
    l_plus = mp.lambda_plus or 0.0
    l_minus = mp.lambda_minus or 0.0
    alpha = power_law.alpha if power_law is not None and power_law.ok else None
    tail_ok = (power_law is not None and power_law.ok and power_law.D <= t.tail_ks_max
               and (power_law.tail_size or 0) >= t.tail_min_size)
    kappa = htmp.kappa if htmp is not None and htmp.status == "success" else None
    spikes = values[values > (mp.spike_threshold or np.inf)]
    bulk_top = float(values[values <= (mp.spike_threshold or np.inf)].max(initial=0.0))
    gap = bool(spikes.size) and (float(spikes.min()) - bulk_top) > t.gap_tw * (mp.tw_scale or 0.0)
    tiny_share = float(np.mean(values < t.tiny_edge_fraction * l_minus)) if l_minus > 0 else 0.0
    excess_share = float(np.mean((values > l_plus) & (values <= 2 * l_plus)))
    ratio = lambda_max / l_plus if l_plus > 0 else None
    evidence: dict[str, float | int | None] = {
        "alpha": alpha, "kappa": kappa, "lambda_max_over_l_plus": ratio, "ks_mp_all": mp.ks_all,
        "ks_mp_bulk": mp.ks_bulk, "n_spikes": mp.n_spikes, "gap": int(gap), "rank_loss": rank_loss,
        "tiny_share": tiny_share, "excess_share": excess_share,
    }
    good_bulk = (mp.ks_bulk or 1.0) < t.good_bulk_ks

    def result(phase: str, rule: str, summary: str) -> PhaseResult:
        very = phase == "heavy-tailed" and alpha is not None and alpha < t.alpha_very_heavy
        label = "very heavy-tailed" if very else phase
        return PhaseResult(phase=phase, rule=rule, very_heavy=very, evidence=evidence, summary=f"{label}: {summary}")

    if rank_loss > t.rank_loss_fraction * M or tiny_share > t.tiny_fraction:
        return result("rank-collapse", "rank loss or mass at zero",
                      f"rank loss {rank_loss} of {M}, {tiny_share:.0%} below {t.tiny_edge_fraction:g} l-")
    if (ratio is not None and ratio > t.heavy_lambda_ratio and (mp.ks_all or 0) > t.heavy_ks_mp and tail_ok
            and alpha is not None and alpha < t.alpha_heavy):
        return result("heavy-tailed", "power-law tail, no MP fit",
                      f"alpha {_fmt(alpha)}, lambda_max {_fmt(ratio)} x l+, KS to MP {_fmt(mp.ks_all)}")
    poor_mp = (mp.ks_all or 0) > t.decay_ks_mp
    if poor_mp and ((alpha is not None and t.alpha_heavy <= alpha <= t.alpha_random)
                    or (excess_share > t.decay_excess_fraction and not gap)):
        return result("bulk-decay", "tail growing out of the bulk",
                      f"alpha {_fmt(alpha)}, {excess_share:.0%} in (l+, 2 l+], KS to MP {_fmt(mp.ks_all)}")
    n_spikes = mp.n_spikes or 0
    # Spikes reaching well past the edge, but few of them just past it (no tail growing out of the bulk).
    far_out = ratio is not None and ratio >= t.bleed_lambda_ratio and excess_share <= t.spikes_excess_fraction
    if good_bulk and 1 <= n_spikes <= t.spikes_max_fraction * M and (gap or far_out):
        # Separated from the bulk by a gap, or reaching well past the edge (learned directions
        # often spread from the edge up to many times l+, with no single gap).
        return result("bulk+spikes", "MP bulk and separated spikes",
                      f"{n_spikes} spikes, {'a gap' if gap else 'no gap'}, lambda_max {_fmt(ratio)} x l+, "
                      f"bulk KS {_fmt(mp.ks_bulk)}")
    if good_bulk and n_spikes >= 1 and not gap and ratio is not None and ratio < t.bleed_lambda_ratio:
        return result("bleeding-out", "mass just past the MP edge",
                      f"{n_spikes} past the TW edge, none separated, lambda_max {_fmt(ratio)} x l+")
    if good_bulk and n_spikes == 0 and ((alpha is not None and alpha > t.alpha_random)
                                        or (kappa is not None and kappa > t.kappa_random) or alpha is None):
        return result("random-like", "MP fits the whole spectrum",
                      f"no spikes, bulk KS {_fmt(mp.ks_bulk)}, alpha {_fmt(alpha)}, kappa {_fmt(kappa)}")
    # No rule holds: the nearest phase where the spikes name one, said to be a fallback.
    if n_spikes == 0:
        # No spikes, yet no rule held: the bulk is not MP's (KS) or the tail is not random's (alpha,
        # kappa). Calling it random-like would call a trained layer untrained.
        return result(UNCLASSIFIED, "no rule held",
                      f"no spikes, bulk KS {_fmt(mp.ks_bulk)}, KS to MP {_fmt(mp.ks_all)}, alpha {_fmt(alpha)}, "
                      f"kappa {_fmt(kappa)}")
    if gap:
        return result("bulk+spikes", "fallback: separated spikes", f"no rule held; {n_spikes} spikes past a gap")
    return result("bulk-decay", "fallback: mass past the edge",
                  f"no rule held; {n_spikes} past the edge, no gap, alpha {_fmt(alpha)}")
