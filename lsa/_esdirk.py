"""The vectorised ESDIRK integrator of `lsa.batch`: Kvaerno 5(4) in s-time with refilled lanes.

`lsa.batch.batch_gradient_flow` builds the problem (`lsa._problem`) and packages the result;
this module holds the integrator itself (see `lsa.batch`'s docstring for the design): the
tableau (pinned to `diffrax.Kvaerno5` by a test), the vector field in s-time, the simplified
Newton iteration with its bordered-diagonal Jacobian, the error and step-size control, the
rejection causes and the lane loop (`integrate`), and the saved metrics (`metrics`).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._expsum import exp_sum
from ._options import STATUS_CODE

_CODE = STATUS_CODE

# ----------------------------------------------------------------------------------------
# Kvaerno 5(4): the tableau of diffrax.Kvaerno5 (Kvaerno 2004), with diffrax's stage
# predictors (from OrdinaryDiffEq.jl).
# ----------------------------------------------------------------------------------------

_G = 0.26
_A = (
    (),
    (_G,),
    (0.13, 0.84033320996790809),
    (0.22371961478320505, 0.47675532319799699, -0.06470895363112615),
    (0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998),
    (0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141, 0.61943039072480676),
    (
        0.13659751177640291,
        0.0,
        -0.05496908796538376,
        -0.04118626728321046,
        0.62993304899016403,
        0.06962479448202728,
    ),
)
_PRED = (
    (),
    (1.0,),
    (-1.366025403784441, 2.3660254037844357),
    (-0.19650552613122207, 0.8113579546496623, 0.38514757148155954),
    (0.10375304369958693, 0.937994698066431, -0.04174774176601781, 0.0),
    (-0.17281112873898072, 0.6235784481025847, 0.5492326806363959, 0.0, 0.0),
    (*_A[5], _G),
)
_B_ERR = (*(a - b for a, b in zip(_A[6], (*_A[5], _G), strict=True)), _G)
_ORDER_ERR = 5.0  # the embedded method is of order 4: error ~ h^5

# Newton and step-size control constants (Hairer & Wanner, Solving ODEs II, IV.8).
_NEWTON_MAX = 7
_NEWTON_TOL = 0.03  # Newton increments, in units of the step tolerance
_SAFETY = 0.9
_FAC_MIN = 0.2
_FAC_MAX = 6.0


# ----------------------------------------------------------------------------------------
# The flow in s-time. With s = int_0^t u^2 as the independent variable (ds/dt = u^2 > 0: u stays
# positive under Theorem 4.1's sigma bound, Lemma A.4), the eigenbasis state y = (p, u, t) obeys
#
#   dp/ds = -c p + lam^2 / u,
#   du/ds = -(sum_i c_i p_i^2 + F(s)) / u + (sum_i lam_i^2 p_i) / u^2,
#   dt/ds = 1 / u^2,
#
# with c = gamma lam^2 and F(s) = sum_{i != j} c_ij V_ij(0)^2 exp(-2 c_ij s) the off-diagonal
# part. F depends on the independent variable only, so its exponentials are evaluated once per
# stage (5 times per step), never inside Newton iterations, and the Jacobian is exact without
# them: diagonal in p plus a border in u (and a t row that nothing depends on).
# `args` is a dict of (B, ...) arrays; its keys (static pytree structure) choose the
# off-diagonal evaluation: "rates" = direct sum, "centers" = ExpSumTable.
# ----------------------------------------------------------------------------------------


def _off_sum(s: Float[Array, " B"], args: dict[str, Array], key: str) -> Float[Array, " B"]:
    """One weighted off-diagonal sum at `s`: `key` in {"w_F", "w_off"}."""
    if "rates" in args:
        return jnp.sum(args[key] * jnp.exp(-2.0 * args["rates"] * s[:, None]), axis=1)
    col = {"w_F": 0, "w_off": 1}[key]
    return jax.vmap(exp_sum)(s, args["centers"], args["moments"][..., col : col + 1])[:, 0]


def _vf(y: Float[Array, "B n"], F: Float[Array, " B"], args: dict[str, Array]) -> Array:
    """`dy/ds` for `y = (p, u, t)` given `F = F(s)`."""
    lam2, c_d = args["lam2"], args["c_d"]
    p, u = y[:, :-2], y[:, -2]
    iu = 1.0 / u
    dp = -c_d * p + lam2 * iu[:, None]
    du = -(jnp.sum(c_d * p**2, axis=1) + F) * iu + jnp.sum(lam2 * p, axis=1) * iu**2
    return jnp.concatenate([dp, du[:, None], (iu**2)[:, None]], axis=1)


class _Newton(eqx.Module):
    """`W = I - h gamma J` at one state, factorised. J is diagonal in p (`-c`), with a u column
    (`-lam^2/u^2`), a u row, the u-u entry and the t row (`-2/u^3`)."""

    w_pp: Float[Array, "B d"]
    w_pu: Float[Array, "B d"]
    w_up: Float[Array, "B d"]
    w_tu: Float[Array, " B"]
    inv_uu: Float[Array, " B"]

    @staticmethod
    def build(y: Array, F: Array, args: dict[str, Array], hg: Float[Array, " B"]) -> _Newton:
        lam2, c_d = args["lam2"], args["c_d"]
        p, u = y[:, :-2], y[:, -2]
        iu = 1.0 / u
        hgc = hg[:, None]
        w_pp = 1.0 + hgc * c_d
        w_pu = hgc * lam2 * (iu**2)[:, None]
        w_up = -hgc * (-2.0 * c_d * p * iu[:, None] + lam2 * (iu**2)[:, None])
        j_uu = (jnp.sum(c_d * p**2, axis=1) + F) * iu**2 - 2.0 * jnp.sum(lam2 * p, axis=1) * iu**3
        w_uu = 1.0 - hg * j_uu
        s_uu = w_uu - jnp.sum(w_up * w_pu / w_pp, axis=1)
        return _Newton(w_pp, w_pu, w_up, 2.0 * hg * iu**3, 1.0 / s_uu)

    def solve(self, r: Float[Array, "B n"]) -> Float[Array, "B n"]:
        rp, ru, rt = r[:, :-2], r[:, -2], r[:, -1]
        xu = (ru - jnp.sum(self.w_up * rp / self.w_pp, axis=1)) * self.inv_uu
        xp = (rp - self.w_pu * xu[:, None]) / self.w_pp
        xt = rt - self.w_tu * xu
        return jnp.concatenate([xp, xu[:, None], xt[:, None]], axis=1)


def _stop_ratio(y: Array, g: Array, r_coef: Array) -> Float[Array, " B"]:
    """`gradient_flow`'s stopping statistic `||f||_max / (u^2 r_min ||y||_max)` over (p, u),
    with `f = u^2 g` the t-derivative: `||g||_max / (r_min ||y||_max)`."""
    scale = jnp.max(jnp.abs(y[:, :-1]), axis=1)
    return jnp.max(jnp.abs(g[:, :-1]), axis=1) / (r_coef * scale)


class _Carry(eqx.Module):
    """Loop state: `B` slots, each integrating one setting (`which`) of the queue of `S`."""

    which: Int[Array, " B"]
    y: Float[Array, "B n"]
    g: Float[Array, "B n"]
    s: Float[Array, " B"]
    h: Float[Array, " B"]
    active: Bool[Array, " B"]
    save_idx: Int[Array, " B"]
    n_acc: Int[Array, " B"]
    n_rej: Int[Array, " B"]
    next: Int[Array, ""]
    buf: Float[Array, "S+1 T+1 n"]
    sbuf: Float[Array, "S+1 T+1"]
    last: Float[Array, "S+1 n"]
    slast: Float[Array, " S+1"]
    status: Int[Array, " S+1"]
    steps: Int[Array, "S+1 2"]
    n_saved: Int[Array, " S+1"]
    it: Int[Array, ""]


class _Queue(eqx.Module):
    """The `S` queued settings plus one sink row (index `S`) for idle lanes."""

    y0: Float[Array, "S+1 n"]
    g0: Float[Array, "S+1 n"]
    h0: Float[Array, " S+1"]
    args: dict[str, Array]
    s_grid: Float[Array, "S+1 T"]
    t_max: Float[Array, " S+1"]
    atol: Float[Array, " S+1"]


class _Trial(eqx.Module):
    """One ESDIRK step attempted from the lanes' states."""

    y: Float[Array, "B n"]
    g: Float[Array, "B n"]
    err: Float[Array, " B"]
    newton_ok: Bool[Array, " B"]


def _scaled(x: Array, y: Array, atol: Array, rtol: Array) -> Float[Array, " B"]:
    return jnp.max(jnp.abs(x) / (atol[:, None] + rtol * jnp.abs(y)), axis=1)


# Stage abscissae of Kvaerno5 (c_1 = 0; c_6 = c_7 = 1): F is evaluated at the 5 distinct ones.
_C = (0.0, 0.52, 1.230333209967908, 0.8957659843500759, 0.43639360985864756, 1.0, 1.0)


def _take(tree: Any, idx: Array) -> Any:
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


def _newton_stage(z, k, F, args, newton, hg, atol, rtol, start_conv):
    """Simplified Newton for one stage derivative `k = f(z + hg k)`: returns `(k, converged,
    failed)`; a lane fails when the increments grow (or turn non-finite) above the tolerance."""
    B = k.shape[0]

    def n_cond(state):
        return jnp.any(~state[2]) & (state[1] < _NEWTON_MAX)

    def n_body(state):
        k, j, conv, fail, eta_prev = state
        Y = z + hg[:, None] * k
        dk = newton.solve(k - _vf(Y, F, args))
        eta = _scaled(hg[:, None] * dk, Y, atol, rtol)
        k = jnp.where(conv[:, None], k, k - dk)
        bad = ~jnp.isfinite(eta) | ((j >= 1) & (eta > eta_prev) & (eta > _NEWTON_TOL))
        fail = fail | (~conv & bad)
        conv = conv | (eta <= _NEWTON_TOL) | bad
        return k, j + 1, conv, fail, jnp.where(conv, eta_prev, eta)

    start = (k, jnp.asarray(0), start_conv, jnp.zeros(B, bool), jnp.full(B, jnp.inf))
    k, _, conv, fail, _ = jax.lax.while_loop(n_cond, n_body, start)
    return k, conv, fail


def _esdirk_step(c: _Carry, h: Array, args: dict[str, Array], atol: Array, rtol: Array) -> _Trial:
    """One Kvaerno 5(4) step of size `h` per lane (stage predictors, frozen Newton matrix, the
    embedded error estimate in the max norm)."""
    hg = h * _G
    Fs = {cc: _off_sum(c.s + cc * h, args, "w_F") for cc in sorted(set(_C[1:]))}
    newton = _Newton.build(c.y, Fs[1.0], args, hg)
    ks = [c.g]
    ok = c.active
    for i in range(1, 7):
        z = c.y + h[:, None] * sum(a * k for a, k in zip(_A[i], ks, strict=False))
        k0 = sum(a * kj for a, kj in zip(_PRED[i], ks, strict=False))
        k, conv, fail = _newton_stage(z, k0, Fs[_C[i]], args, newton, hg, atol, rtol, ~ok)
        ok = ok & conv & ~fail
        ks.append(jnp.asarray(k))
    y_new = c.y + h[:, None] * sum(a * k for a, k in zip((*_A[6], _G), ks, strict=True))
    err = h[:, None] * sum(b * k for b, k in zip(_B_ERR, ks, strict=True))
    scale = jnp.maximum(jnp.abs(c.y), jnp.abs(y_new))
    e = jnp.max(jnp.abs(err) / (atol[:, None] + rtol * scale), axis=1)
    # stiffly accurate: y_new is the last stage, so g(y_new) = k_7 (FSAL)
    return _Trial(y=y_new, g=ks[6], err=e, newton_ok=ok)


def _rejection_cause(trial: _Trial) -> Int[Array, " B"]:
    """Why a step was rejected, as a `STATUS` code (reported if the rejections repeat until
    the step size underflows): non-finite, u <= 0, Newton failure, or the error test."""
    finite = jnp.isfinite(trial.err) & jnp.all(jnp.isfinite(trial.y), axis=1)
    return jnp.where(
        ~finite,
        _CODE["non_finite"],
        jnp.where(
            trial.y[:, -2] <= 0,
            _CODE["u_nonpositive"],
            jnp.where(~trial.newton_ok, _CODE["newton_failure"], _CODE["step_size_underflow"]),
        ),
    )


def _init_carry(q: _Queue, n_real: Array, slots: int, T: int) -> _Carry:
    S = q.y0.shape[0] - 1
    n = q.y0.shape[1]
    dtype = q.y0.dtype
    first = jnp.arange(slots)
    which = jnp.where(first < n_real, first, S)
    return _Carry(
        which=which,
        y=q.y0[which],
        g=q.g0[which],
        s=jnp.zeros(slots, dtype),
        h=q.h0[which],
        active=which < S,
        save_idx=jnp.ones(slots, jnp.int32),
        n_acc=jnp.zeros(slots, jnp.int32),
        n_rej=jnp.zeros(slots, jnp.int32),
        next=jnp.minimum(jnp.asarray(slots), n_real),
        buf=jnp.zeros((S + 1, T + 1, n), dtype).at[:S, 0].set(q.y0[:S]),
        sbuf=jnp.full((S + 1, T + 1), jnp.inf, dtype).at[:S, 0].set(0.0),
        last=q.y0,
        slast=jnp.zeros(S + 1, dtype),
        status=jnp.where(jnp.arange(S + 1) < n_real, 0, _CODE["padding"]).astype(jnp.int32),
        steps=jnp.zeros((S + 1, 2), jnp.int32),
        n_saved=jnp.ones(S + 1, jnp.int32),
        it=jnp.asarray(0),
    )


def _body(c: _Carry, q: _Queue, n_real: Array, rtol: Array, eps: Array, max_steps: Array) -> _Carry:
    """One iteration of the lanes: step, accept or reject, classify the finished, save, refill."""
    S = q.y0.shape[0] - 1
    T = q.s_grid.shape[1]
    args, atol, active = _take(q.args, c.which), q.atol[c.which], c.active
    s_target = q.s_grid[c.which, jnp.minimum(c.save_idx, T - 1)]
    lands = c.h >= s_target - c.s
    h = jnp.where(lands, s_target - c.s, c.h)
    trial = _esdirk_step(c, h, args, atol, rtol)

    finite = jnp.isfinite(trial.err) & jnp.all(jnp.isfinite(trial.y), axis=1)
    accept = trial.newton_ok & finite & (trial.y[:, -2] > 0) & (trial.err <= 1.0)
    fac = _SAFETY * jnp.maximum(jnp.where(finite, trial.err, 1e10), 1e-10) ** (-1.0 / _ORDER_ERR)
    fac = jnp.where(trial.newton_ok, jnp.clip(fac, _FAC_MIN, _FAC_MAX), 0.25)
    # after a step shortened to land on a save point, keep the longer proposal
    h_next = jnp.where(accept & lands, jnp.maximum(h * fac, c.h), h * fac)
    y = jnp.where(accept[:, None], trial.y, c.y)
    g = jnp.where(accept[:, None], trial.g, c.g)
    s = jnp.where(accept, jnp.where(lands, s_target, c.s + h), c.s)
    n_acc = c.n_acc + accept.astype(jnp.int32)
    n_rej = c.n_rej + (active & ~accept).astype(jnp.int32)

    # outcome of the lanes that finish now (priority: converged, horizon, grid, stall, budget)
    converged = accept & (_stop_ratio(trial.y, trial.g, args["r_coef"]) <= eps)
    horizon = accept & ~converged & (trial.y[:, -1] >= q.t_max[c.which])
    grid = accept & ~converged & ~horizon & lands & (c.save_idx >= T - 1)
    stall = active & ~accept & (h_next <= 1e-14 * jnp.maximum(c.s, q.h0[c.which]))
    budget = active & (n_acc + n_rej >= max_steps)
    code = jnp.select(
        [converged, horizon, grid, stall],
        [_CODE["converged"], _CODE["horizon"], _CODE["save_grid_exhausted"],
         _rejection_cause(trial)],
        _CODE["max_steps"],
    )  # fmt: skip
    done = active & (converged | horizon | grid | stall | budget)

    write = accept & (lands | converged | horizon)
    idx = jnp.where(write, jnp.minimum(c.save_idx, T - 1), T)
    row = jnp.where(active, c.which, S)
    save_idx = jnp.minimum(c.save_idx + write.astype(jnp.int32), T)
    drow = jnp.where(done, c.which, S)

    # refill finished lanes from the queue
    rank = jnp.cumsum(done.astype(jnp.int32)) - 1
    cand = c.next + rank
    take = done & (cand < n_real)
    new = jnp.where(take, cand, S)
    fresh = done[:, None]
    return _Carry(
        which=jnp.where(done, new, c.which),
        y=jnp.where(fresh, q.y0[new], y),
        g=jnp.where(fresh, q.g0[new], g),
        s=jnp.where(done, 0.0, s),
        h=jnp.where(done, q.h0[new], jnp.where(active, h_next, c.h)),
        active=jnp.where(done, take, active),
        save_idx=jnp.where(done, 1, save_idx),
        n_acc=jnp.where(done, 0, n_acc),
        n_rej=jnp.where(done, 0, n_rej),
        next=jnp.minimum(c.next + jnp.sum(done.astype(jnp.int32)), n_real),
        buf=c.buf.at[row, idx].set(y),
        sbuf=c.sbuf.at[row, idx].set(s),
        last=c.last.at[drow].set(y),
        slast=c.slast.at[drow].set(s),
        status=c.status.at[drow].set(code),
        steps=c.steps.at[drow].set(jnp.stack([n_acc, n_rej], axis=1)),
        n_saved=c.n_saved.at[drow].set(save_idx),
        it=c.it + 1,
    )


@eqx.filter_jit
def _integrate(
    y0: Float[Array, "S n"],
    args_all: dict[str, Array],
    s_grid: Float[Array, "S T"],
    h0: Float[Array, " S"],
    t_max: Float[Array, " S"],
    atol_all: Float[Array, " S"],
    n_real: Int[Array, ""],
    rtol: Float[Array, ""],
    eps: Float[Array, ""],
    max_steps: Int[Array, ""],
    slots: int,
) -> _Carry:
    """Integrate the first `n_real` of `S` queued settings with `slots` lanes: a lane whose
    setting has finished takes the next one from the queue (continuous batching), so lanes never
    idle while work remains. Per-setting outcome codes are those of `STATUS`."""
    S = y0.shape[0]
    g0 = _vf(y0, _off_sum(jnp.zeros(S, y0.dtype), args_all, "w_F"), args_all)
    # Row S of the queue and of the output buffers is a sink for idle lanes.
    pad = lambda a, v: jnp.concatenate([a, jnp.full((1, *a.shape[1:]), v, a.dtype)])  # noqa: E731
    q = _Queue(
        y0=pad(y0, 1.0),
        g0=pad(g0, 0.0),
        h0=pad(h0, 1.0),
        args=jax.tree_util.tree_map(lambda a: pad(a, 1.0), args_all),
        s_grid=pad(s_grid, jnp.inf),
        t_max=pad(t_max, jnp.inf),
        atol=pad(atol_all, 1.0),
    )
    carry = _init_carry(q, n_real, slots, s_grid.shape[1])
    return jax.lax.while_loop(
        lambda c: jnp.any(c.active),
        lambda c: _body(c, q, n_real, rtol, eps, max_steps),
        carry,
    )


@jax.jit
def _metrics(
    ys: Float[Array, "B T n"], ss: Float[Array, "B T"], args: dict[str, Array]
) -> dict[str, Float[Array, "B T"]]:
    """Loss, `||U||_F^2`, off-diagonal `||V||^2` and the stopping statistic at saved states."""

    def one(ys_i):  # (B, n) and (B,) at one saved index
        y, s = ys_i
        lam2, c_d = args["lam2"], args["c_d"]
        p, u = y[:, :-2], y[:, -2]
        F = _off_sum(s, args, "w_F")
        off2 = _off_sum(s, args, "w_off")
        quad = jnp.sum(c_d * p**2, axis=1) + F
        loss = 0.5 * (u**2 * quad - 2.0 * u * jnp.sum(lam2 * p, axis=1) + args["trace"])
        ratio = _stop_ratio(y, _vf(y, F, args), args["r_coef"])
        return {"loss": loss, "U_norm2": jnp.sum(p**2, axis=1) + off2, "off2": off2,
                "stop_ratio": ratio}  # fmt: skip

    safe = jnp.where(jnp.isfinite(ss), ss, 0.0)
    out = jax.lax.map(one, (jnp.swapaxes(ys, 0, 1), jnp.swapaxes(safe, 0, 1)))
    return {k: jnp.swapaxes(v, 0, 1) for k, v in out.items()}
