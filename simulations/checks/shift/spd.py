"""Checks s16–s19: SPD [AKY eq. 15] and ILWD [AKY eqs. 16–17] between the trained LSA and two
predictors linear in h, against the closed forms of theory.md §11.3 (§14 row 24)."""

from __future__ import annotations

import numpy as np

import theory

from ...icl.distributions import named_shift
from ...icl.montecarlo import mc_ilwd, mc_spd
from ...icl.predictors import GD, Averaging
from ..base import CheckResult
from .instance import ShiftInstance, Sizes

__all__ = ["check_spd_ilwd"]


def check_spd_ilwd(inst: ShiftInstance, sizes: Sizes) -> list[CheckResult]:
    """s16–s19: SPD and ILWD between the trained LSA and GD(0.01) (at M_b) and averaging (at M_a)
    against the closed forms for predictors linear in h (theory.md §11.3, §14 row 24); ILWD by
    probe fitting with 2d probes (`mc_ilwd`). `details["z_if_rho_N"]`: the z-score of the
    closed form with the rho = N convention."""
    L, N, d, z_max = inst.Lambda, inst.N, inst.d, sizes.z_max
    dist = named_shift("none", L)
    rows = []
    tag = 16
    for other, M in ((GD(0.01), inst.M_b), (Averaging(), inst.M_a)):
        G2 = theory.gd_G(0.01, M, d) if isinstance(other, GD) else np.eye(d)
        Ehh = theory.prompt_moment(L, np.eye(d), 0.0, M)
        G_rhoN = inst.Ginv * (M / N)
        for metric in ("SPD", "ILWD"):
            if metric == "SPD":
                est = mc_spd(inst.lsa, other, dist, M, sizes.n_spd, inst.key(tag))
                pred = theory.spd_linear(inst.Ginv, G2, L, Ehh)
                mut = theory.spd_linear(G_rhoN, G2, L, Ehh)
                ref = "AKY eq. 15; theory.md §11.3"
            else:
                est = mc_ilwd(inst.lsa, other, dist, M, sizes.n_ilwd, inst.key(tag))
                pred = theory.ilwd_linear(inst.Ginv, G2, Ehh)
                mut = theory.ilwd_linear(G_rhoN, G2, Ehh)
                ref = "AKY eqs. 16-17; theory.md §11.3"
            z = est.z(pred)
            rows.append(
                CheckResult(
                    f"s{tag}",
                    f"{metric}(LSA, {other.name}) = closed form for linear-in-h, M = {M}",
                    ref,
                    pred,
                    est.mean,
                    z,
                    z_max,
                    "z",
                    abs(z) <= z_max,
                    {"M": M, "se": est.se, "n": est.n, "z_if_rho_N": est.z(mut)},
                )
            )
            tag += 1
    return rows
