"""Independent reference check of the HD family (issue 2) and CAM-HD (issue 3).

The reference below is written from the issue texts and the CAM-HD paper (Algorithm 1), not from
sensitivity/optim: deliberately naive, per element, in Python floats (float64), one function per
rule. The optimizers under test run in float64 on the same problem and must agree with it after
every step (parameters, learning rates, CAM-HD's gammas and level rates).

Readings of points the issues leave open are marked "READING:" where they are used. Where the
first reading here differed from the implementation, the implementation's docstring was read and
its reading judged faithful to issue 3 and to Algorithm 1's chain rule, so the reference follows it:

* the hypergradients of step t are scaled by τ(t), literally as the issue and paper §2.4 write it
  (the exact chain rule through κ_{t−1} would give τ(t−1), a factor e^{−r} apart);
* the step combines the level rates with the γ updated at the same step (Algorithm 1 writes the
  previous γ there; identical when δ = 0);
* ``level_lrs()`` means are over elements, not over the level's groups.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from sensitivity.optim import create

OPS = ("sgd", "sgdn", "adam")
LOPS = ("sgd", "sgdn", "adam")
STEPS = 7
TOL = dict(rtol=1e-10, atol=1e-12)  # float64; only summation order differs from the reference


# --------------------------------------------------------------------------------------------
# Per-element rules (issue 2, "Exact semantics"). Tensors are flat lists of Python floats.
# --------------------------------------------------------------------------------------------


def coupled_l2(grad: list[float], theta: list[float], weight_decay: float) -> list[float]:
    """Step 1: g_t = ∇f(θ_{t−1}) + weight_decay·θ_{t−1}."""
    return [gr + weight_decay * th for gr, th in zip(grad, theta)]


def direction_sgd(g: list[float], state: dict, t: int, hp: dict) -> list[float]:
    """sgd: d_t = g_t."""
    return list(g)


def direction_sgdn(g: list[float], state: dict, t: int, hp: dict) -> list[float]:
    """sgdn: buf ← μ·buf + g_t; d_t = g_t + μ·buf (torch Nesterov, dampening 0, buf_0 = 0)."""
    mu = hp["momentum"]
    buf = state.setdefault("buf", [0.0] * len(g))
    d = []
    for i, gi in enumerate(g):
        buf[i] = mu * buf[i] + gi
        d.append(gi + mu * buf[i])
    return d


def direction_adam(g: list[float], state: dict, t: int, hp: dict) -> list[float]:
    """adam: d_t = m̂_t / (√v̂_t + ε), torch.optim.Adam's bias-corrected moments."""
    b1, b2 = hp["betas"]
    eps = hp["eps"]
    m = state.setdefault("m", [0.0] * len(g))
    v = state.setdefault("v", [0.0] * len(g))
    d = []
    for i, gi in enumerate(g):
        m[i] = b1 * m[i] + (1 - b1) * gi
        v[i] = b2 * v[i] + (1 - b2) * gi * gi
        m_hat = m[i] / (1 - b1**t)
        v_hat = v[i] / (1 - b2**t)
        d.append(m_hat / (math.sqrt(v_hat) + eps))
    return d


DIRECTIONS = {"sgd": direction_sgd, "sgdn": direction_sgdn, "adam": direction_adam}


def lop_sgd(alpha: float, D: float, state: dict, hp: dict) -> float:
    """α ← α − β·D_t."""
    return alpha - hp["beta"] * D


def lop_sgdn(alpha: float, D: float, state: dict, hp: dict) -> float:
    """b ← μ_h·b + D_t; α ← α − β·(D_t + μ_h·b)."""
    mu_h = hp["lop_momentum"]
    state["b"] = mu_h * state.get("b", 0.0) + D
    return alpha - hp["beta"] * (D + mu_h * state["b"])


def lop_adam(alpha: float, D: float, state: dict, hp: dict) -> float:
    """k ← k+1; Adam moments of D_t bias-corrected by k (k = 1 at t = 2)."""
    b1h, b2h = hp["lop_betas"]
    eps_h = hp["lop_eps"]
    state["k"] = k = state.get("k", 0) + 1
    state["m"] = b1h * state.get("m", 0.0) + (1 - b1h) * D
    state["v"] = b2h * state.get("v", 0.0) + (1 - b2h) * D * D
    m_hat = state["m"] / (1 - b1h**k)
    v_hat = state["v"] / (1 - b2h**k)
    return alpha - hp["beta"] * m_hat / (math.sqrt(v_hat) + eps_h)


LR_RULES = {"sgd": lop_sgd, "sgdn": lop_sgdn, "adam": lop_adam}


class ReferenceHD:
    """<op>-hd-<lop> for a list of param groups, each {"params": [flat lists], hyperparameters...}."""

    def __init__(self, op: str, lop: str, groups: list[dict]):
        self.direction = DIRECTIONS[op]
        self.lr_rule = LR_RULES[lop]
        self.groups = groups
        for group in groups:
            group["t"] = 0
            group["lop_state"] = {}
            group["base_state"] = [{} for _ in group["params"]]
            group["d_prev"] = None

    def step(self, grads: list[list[list[float]]]) -> None:
        for group, group_grads in zip(self.groups, grads):
            group["t"] += 1
            t = group["t"]
            gs = [coupled_l2(gr, th, group["weight_decay"]) for gr, th in zip(group_grads, group["params"])]
            # Step 2: from t ≥ 2, one α update per group from D_t = −Σ g_t·d_{t−1}, before any θ moves.
            if t >= 2:
                D = 0.0
                for g, d_prev in zip(gs, group["d_prev"]):
                    for gi, di in zip(g, d_prev):
                        D -= gi * di
                group["lr"] = self.lr_rule(group["lr"], D, group["lop_state"], group)
            # Steps 3–4: direction, then θ_t = θ_{t−1} − α_t·d_t.
            ds = [self.direction(g, st, t, group) for g, st in zip(gs, group["base_state"])]
            for theta, d in zip(group["params"], ds):
                for i, di in enumerate(d):
                    theta[i] -= group["lr"] * di
            group["d_prev"] = ds


# --------------------------------------------------------------------------------------------
# HD test problem: random quadratic plus a nonlinear coupling, several tensors in two groups.
# --------------------------------------------------------------------------------------------

SHAPES = ([(3, 2), (4,)], [(2, 3), (5,), (1,)])


def make_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    init, quad = [], []
    for group_shapes in SHAPES:
        init.append([torch.randn(s, generator=gen, dtype=torch.float64) for s in group_shapes])
        for s in group_shapes:
            n = math.prod(s)
            m = torch.randn(n, n, generator=gen, dtype=torch.float64)
            scale = 0.5 + 2.0 * torch.rand((), generator=gen, dtype=torch.float64)
            a = scale * (m @ m.T / n + 0.5 * torch.eye(n, dtype=torch.float64))
            quad.append((a, torch.randn(n, generator=gen, dtype=torch.float64)))

    def loss(tensors: list[torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        coupling = torch.zeros((), dtype=torch.float64)
        for x, (a, b) in zip(tensors, quad):
            x = x.reshape(-1)
            total = total + 0.5 * x @ (a @ x) + b @ x + 0.3 * torch.log(torch.cosh(x)).sum()
            coupling = coupling + torch.tanh(x).sum()
        return total + 0.1 * coupling**2

    return init, loss


def flat_grads(loss, values: list[list[float]], shapes: list[tuple]) -> list[list[float]]:
    """∇f at the reference's own θ (autograd only differentiates the test loss)."""
    xs = [torch.tensor(v, dtype=torch.float64).reshape(s).requires_grad_() for v, s in zip(values, shapes)]
    grads = torch.autograd.grad(loss(xs), xs)
    return [g.reshape(-1).tolist() for g in grads]


def as_tensor(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# Per op: (α0, β) for the two groups, and base hyperparameters (group 1 overrides some).
HD_SETTINGS = {
    "sgd": dict(lrs=(0.02, 0.01), betas_hd=(5e-5, 1e-4), base={}, group1={}),
    "sgdn": dict(lrs=(0.005, 0.003), betas_hd=(1e-5, 2e-5), base={"momentum": 0.9}, group1={"momentum": 0.8}),
    "adam": dict(
        lrs=(0.02, 0.05),
        betas_hd=(3e-4, 5e-4),
        base={"betas": (0.9, 0.999), "eps": 1e-8},
        group1={"betas": (0.8, 0.99)},
    ),
}
LOP_SETTINGS = {"sgd": {}, "sgdn": {"lop_momentum": 0.7}, "adam": {"lop_betas": (0.8, 0.99), "lop_eps": 1e-6}}
# With the Adam lop, |Δα| ≈ β per step whatever the scale of D; β is picked for that.
ADAM_LOP_BETAS = {"sgd": (1e-3, 5e-4), "sgdn": (2e-4, 1e-4), "adam": (2e-3, 4e-3)}

HD_CASES = [(f"{op}-hd-{lop}", op, lop) for op in OPS for lop in LOPS] + [(f"{op}-hd", op, "sgd") for op in OPS]


@pytest.mark.parametrize("name,op,lop", HD_CASES, ids=[c[0] for c in HD_CASES])
def test_hd_matches_reference(name, op, lop):
    setting = HD_SETTINGS[op]
    betas_hd = ADAM_LOP_BETAS[op] if lop == "adam" else setting["betas_hd"]
    init, loss = make_problem(seed=1)
    weight_decays = (1e-2, 3e-2)

    params = [[x.clone().requires_grad_() for x in group] for group in init]
    torch_groups = []
    ref_groups = []
    for i, group in enumerate(params):
        overrides = {"lr": setting["lrs"][i], "beta": betas_hd[i], "weight_decay": weight_decays[i]}
        if i == 1:
            overrides.update(setting["group1"])
        torch_groups.append({"params": group, **overrides})
        ref_groups.append(
            {
                "params": [x.detach().reshape(-1).tolist() for x in group],
                **setting["base"],
                **LOP_SETTINGS[lop],
                **overrides,
            }
        )
    hyper = {"weight_decay": 0.5, **setting["base"]}  # group values override these defaults
    if name != f"{op}-hd":
        hyper.update(LOP_SETTINGS[lop])
    opt = create(name, torch_groups, **hyper)
    ref = ReferenceHD(op, lop, ref_groups)
    flat_params = [x for group in params for x in group]
    shapes = [x.shape for x in flat_params]
    lr0 = [g["lr"] for g in opt.param_groups]

    for step in range(1, STEPS + 1):
        opt.zero_grad()
        loss(flat_params).backward()
        opt.step()
        ref_values = [v for g in ref.groups for v in g["params"]]
        grads = flat_grads(loss, ref_values, shapes)
        ref.step([grads[:2], grads[2:]])
        for i, group in enumerate(opt.param_groups):
            assert isinstance(group["lr"], float)
            assert_close(group["lr"], ref.groups[i]["lr"], **TOL, msg=lambda m: f"{name} step {step} group {i} lr: {m}")
            for j, x in enumerate(group["params"]):
                assert_close(
                    x.detach().reshape(-1),
                    as_tensor(ref.groups[i]["params"][j]),
                    **TOL,
                    msg=lambda m: f"{name} step {step} group {i} tensor {j}: {m}",
                )
    # The hypergradient path must have been exercised, separately in each group.
    moved = [abs(g["lr"] - a) / a for g, a in zip(opt.param_groups, lr0)]
    assert min(moved) > 0.02, f"{name}: α barely moved ({moved}); the check would be vacuous"
    assert all(g["lr"] > 0 for g in opt.param_groups)


TORCH_BASE = {
    "sgd": lambda groups: torch.optim.SGD(groups, lr=0.1, foreach=False),
    "sgdn": lambda groups: torch.optim.SGD(groups, lr=0.1, nesterov=True, momentum=0.9, foreach=False),
    "adam": lambda groups: torch.optim.Adam(groups, lr=0.1, foreach=False),
}


@pytest.mark.parametrize("op", OPS)
def test_reference_with_zero_beta_is_torch_optim(op):
    """Checks the reference itself: with β = 0 its directions and L2 reproduce torch.optim."""
    setting = HD_SETTINGS[op]
    init, loss = make_problem(seed=2)
    params = [[x.clone().requires_grad_() for x in group] for group in init]
    groups, ref_groups = [], []
    for i, group in enumerate(params):
        overrides = {"lr": setting["lrs"][i], "weight_decay": (1e-2, 3e-2)[i], **setting["base"]}
        if i == 1:
            overrides.update(setting["group1"])
        groups.append({"params": group, **overrides})
        ref_groups.append({"params": [x.detach().reshape(-1).tolist() for x in group], "beta": 0.0, **overrides})
    opt = TORCH_BASE[op](groups)
    ref = ReferenceHD(op, "sgd", ref_groups)
    flat_params = [x for group in params for x in group]
    for _ in range(STEPS):
        opt.zero_grad()
        loss(flat_params).backward()
        opt.step()
        grads = flat_grads(loss, [v for g in ref.groups for v in g["params"]], [x.shape for x in flat_params])
        ref.step([grads[:2], grads[2:]])
    for group, ref_group in zip(opt.param_groups, ref.groups):
        for x, values in zip(group["params"], ref_group["params"]):
            assert_close(x.detach().reshape(-1), as_tensor(values), **TOL)


# --------------------------------------------------------------------------------------------
# CAM-HD (issue 3; paper 002, Algorithm 1), per element.
# --------------------------------------------------------------------------------------------


def module_of(name: str) -> str:
    """'0.weight' -> '0': a parameter's module is its name without the last component."""
    return name.rsplit(".", 1)[0] if "." in name else name


def level_key(level: str, name: str, shape: tuple, j: int):
    """The learning rate that element j (flat, row-major) of tensor `name` uses at `level`."""
    if level == "parameter":
        return (name, j)
    if level == "unit":
        # READING: a unit is an index along dim 0 within one module, so row i of a weight and
        # element i of the module's bias share one lr ("bias element i belongs to unit i"); a 1-D
        # tensor's dim-0 slices are its elements.
        return (module_of(name), j // math.prod(shape[1:]))
    if level == "layer":
        return module_of(name)
    return "global"


class ReferenceCamHD:
    """<op>-cam-hd for one param group of named tensors [(name, shape, flat list)]."""

    def __init__(self, op, named, *, lr, beta, weight_decay, levels, gammas, delta, decay_rate, alpha_inf, **base):
        self.direction = DIRECTIONS[op]
        self.names = [name for name, _, _ in named]
        self.params = [values for _, _, values in named]
        self.hp = base
        self.beta, self.weight_decay, self.delta = beta, weight_decay, delta
        self.levels = list(levels)
        self.gammas = list(gammas)
        self.decay_rate = decay_rate
        self.alpha_inf = lr if alpha_inf is None else alpha_inf  # "alpha_inf defaults to the initial lr"
        self.n = sum(len(v) for v in self.params)
        # keys[l][k][j]: which lr element j of tensor k uses at level l; sizes: n_i of each lr.
        self.keys = {l: [[level_key(l, nm, sh, j) for j in range(len(v))] for nm, sh, v in named] for l in levels}
        self.sizes = {l: {} for l in levels}
        for l in levels:
            for tensor_keys in self.keys[l]:
                for key in tensor_keys:
                    self.sizes[l][key] = self.sizes[l].get(key, 0) + 1
        self.rates = {l: {key: lr for key in self.sizes[l]} for l in levels}  # every level starts at α0
        self.t = 0
        self.base_state = [{} for _ in self.params]
        self.d_prev = None
        self.clamped = False  # whether a γ ever went negative (so the clamp was exercised)

    def tau(self, t: int) -> float:
        return 1.0 if self.decay_rate is None else math.exp(-self.decay_rate * t)

    def effective_lr(self, k: int, j: int, gammas) -> float:
        """α*_p = Σ_levels γ_level·α_level(p)."""
        return sum(g * self.rates[l][self.keys[l][k][j]] for l, g in zip(self.levels, gammas))

    def step(self, grads: list[list[float]]) -> None:
        self.t += 1
        t = self.t
        # READING: κ uses τ(t), and the hypergradients of step t are scaled by the same τ(t),
        # literally as issue 3 and paper §2.4 write it.
        tau = self.tau(t)
        gs = [coupled_l2(gr, th, self.weight_decay) for gr, th in zip(grads, self.params)]
        gammas_before = list(self.gammas)
        if t >= 2:
            D = [[-tau * gi * di for gi, di in zip(g, d)] for g, d in zip(gs, self.d_prev)]
            rates_before = {l: dict(self.rates[l]) for l in self.levels}
            # Level rates, γ_{t−1} as in Algorithm 1: α_ℓ(i) ← α_ℓ(i) − β·γ_ℓ·(n/n_i)·Σ_{p∈i} D_p.
            for l, gamma in zip(self.levels, gammas_before):
                sums = {}
                for k, tensor_keys in enumerate(self.keys[l]):
                    for j, key in enumerate(tensor_keys):
                        sums[key] = sums.get(key, 0.0) + D[k][j]
                for key, s in sums.items():
                    self.rates[l][key] -= self.beta * gamma * (self.n / self.sizes[l][key]) * s
            # γ_ℓ ← γ_ℓ − δ·Σ_p D_p·α_ℓ(p), α from before this step's level update (α_{ℓ,t−1}).
            for i, l in enumerate(self.levels):
                h = 0.0
                for k, tensor_keys in enumerate(self.keys[l]):
                    for j, key in enumerate(tensor_keys):
                        h += D[k][j] * rates_before[l][key]
                self.gammas[i] -= self.delta * h
            # Clamp at ≥ 0, then renormalise to sum 1.
            self.clamped |= any(g < 0 for g in self.gammas)
            clamped = [max(g, 0.0) for g in self.gammas]
            self.gammas = [g / sum(clamped) for g in clamped]
        ds = [self.direction(g, st, t, self.hp) for g, st in zip(gs, self.base_state)]
        # READING (adapted, see module docstring): α*_{p,t} = Σ γ_{ℓ,t}·α_{ℓ,t}, the step uses the γ
        # and α updated at this step, as HD steps with the α updated before any θ moves. Then the
        # γ_{t−1} in the level update is exactly the γ of step t−1's combination (exact chain rule).
        # Algorithm 1 literally writes α*_{p,t} = Σ γ_{ℓ,t−1}·α_{ℓ,t} (new γ act one step later).
        combine = self.gammas
        kappa_sum = 0.0
        for k, (theta, d) in enumerate(zip(self.params, ds)):
            for j, dj in enumerate(d):
                kappa = tau * self.effective_lr(k, j, combine) + (1 - tau) * self.alpha_inf
                theta[j] -= kappa * dj
                kappa_sum += kappa
        self.last_mean_kappa = kappa_sum / self.n
        self.d_prev = ds

    def level_means(self) -> dict[str, float]:
        """READING: "mean lr at that level" is the mean over elements, so a unit of 4 elements
        weighs 4 times a unit of 1 (the mean rate the parameters experience)."""
        return {l: sum(self.rates[l][key] for keys in self.keys[l] for key in keys) / self.n for l in self.levels}

    def mean_kappa(self) -> float:
        """The element-mean effective rate κ of the last step (`curve_metrics()["lr"]`)."""
        return self.last_mean_kappa


def make_model_problem(kind: str = "mlp", seed: int = 0):
    """A tiny model (weights and biases, so unit and layer membership matter) and its loss as a
    function of the parameter tensors in `named_parameters()` order (written out by hand)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    nn = torch.nn
    if kind == "mlp":
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        x = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    else:  # conv: the unit level is one lr per filter (dim-0 slice of the 4-D weight) plus its bias
        model = nn.Sequential(nn.Conv2d(1, 3, 2), nn.Tanh(), nn.Flatten(), nn.Linear(27, 2)).double()
        x = torch.randn(10, 1, 4, 4, generator=gen, dtype=torch.float64)
        x = torch.nn.functional.unfold(x, 2)  # (10, 4, 9) patches: the conv as a matmul (conv2d is slow here)
    y = torch.randn(10, 2, generator=gen, dtype=torch.float64)

    def loss(w1, b1, w2, b2):
        if kind == "mlp":
            out = torch.tanh(x @ w1.T + b1) @ w2.T + b2
        else:
            out = torch.tanh(w1.reshape(3, 4) @ x + b1[:, None]).flatten(1) @ w2.T + b2
        return ((out - y) ** 2).mean() + 0.05 * sum((p**2).sum() for p in (w1, b1, w2, b2)) ** 1.5

    return model, loss


# Per op: lr, β and δ at which level rates and γ visibly move within a few steps.
CAM_SETTINGS = {
    "sgd": dict(lr=0.2, beta=4e-3, delta=1.0),
    "sgdn": dict(lr=0.05, beta=2e-4, delta=1.0),
    "adam": dict(lr=0.02, beta=1e-4, delta=1.0),
}
CAM_LEVELS = {"2level": (("unit", "global"), (0.2, 0.8)), "3level": (("parameter", "layer", "global"), (0.3, 0.3, 0.4))}
CAM_CASES = [
    (op, levels, decay_rate, alpha_inf, "mlp")
    for op in OPS
    for levels in CAM_LEVELS
    for decay_rate, alpha_inf in ((None, None), (0.05, None), (0.05, 0.01))
] + [(op, levels, None, None, "conv") for op in OPS for levels in CAM_LEVELS]


@pytest.mark.parametrize(
    "op,levels_id,decay_rate,alpha_inf,model",
    CAM_CASES,
    ids=[f"{c[0]}-{c[1]}-r{c[2]}-ainf{c[3]}-{c[4]}" for c in CAM_CASES],
)
def test_cam_hd_matches_reference(op, levels_id, decay_rate, alpha_inf, model):
    run_cam_hd_case(op, *CAM_LEVELS[levels_id], decay_rate, alpha_inf, CAM_SETTINGS[op], model_kind=model)


def test_cam_hd_clamped_gammas_match_reference():
    # With a large lr the iterates oscillate, ∂f/∂γ > 0 for both levels, and the small γ_unit is
    # driven below 0 at step 2 (the clamp rule does not depend on op, so one op exercises it).
    rates = dict(lr=1.0, beta=4e-3, delta=0.3)
    ref = run_cam_hd_case("sgd", ("unit", "global"), (0.1, 0.9), None, None, rates, check_moved=False)
    assert ref.clamped, "no γ went negative, so the clamp was not exercised"


def run_cam_hd_case(
    op, levels, gammas, decay_rate, alpha_inf, rates, *, model_kind="mlp", check_moved=True
) -> ReferenceCamHD:
    model, loss = make_model_problem(model_kind, seed=3)
    hyper = dict(**rates, weight_decay=1e-2, levels=levels, gammas=gammas, decay_rate=decay_rate, alpha_inf=alpha_inf)
    base = {"sgd": {}, "sgdn": {"momentum": 0.8}, "adam": {"betas": (0.8, 0.99), "eps": 1e-8}}[op]
    named = [(name, tuple(p.shape), p.detach().reshape(-1).tolist()) for name, p in model.named_parameters()]
    opt = create(f"{op}-cam-hd", model.named_parameters(), **hyper, **base)
    ref = ReferenceCamHD(op, named, **hyper, **base)
    params = list(model.parameters())
    shapes = [p.shape for p in params]

    def ref_grads():
        xs = [torch.tensor(v, dtype=torch.float64).reshape(s).requires_grad_() for v, s in zip(ref.params, shapes)]
        return [g.reshape(-1).tolist() for g in torch.autograd.grad(loss(*xs), xs)]

    for step in range(1, STEPS + 1):
        opt.zero_grad()
        loss(*params).backward()
        opt.step()
        ref.step(ref_grads())
        where = f"{op}-cam-hd {'+'.join(levels)} step {step}"
        gammas_now = torch.tensor(opt.gammas, dtype=torch.float64)
        assert_close(gammas_now, as_tensor(ref.gammas), **TOL, msg=lambda m: f"{where} gammas: {m}")
        for name, p, values in zip(ref.names, params, ref.params):
            assert_close(p.detach().reshape(-1), as_tensor(values), **TOL, msg=lambda m: f"{where} {name}: {m}")
        level_lrs = opt.level_lrs()
        metrics = opt.curve_metrics()
        for (level, mean), gamma in zip(ref.level_means().items(), ref.gammas):
            assert_close(float(level_lrs[level]), mean, **TOL, msg=lambda m: f"{where} level_lrs[{level}]: {m}")
            assert_close(float(metrics[f"lr_{level}"]), mean, **TOL, msg=lambda m: f"{where} lr_{level}: {m}")
            assert_close(float(metrics[f"gamma_{level}"]), gamma, **TOL, msg=lambda m: f"{where} gamma_{level}: {m}")
        assert_close(float(metrics["lr"]), ref.mean_kappa(), **TOL, msg=lambda m: f"{where} curve lr: {m}")
    if not check_moved:
        return ref
    # Both learned quantities must have moved, or the comparison says little.
    assert max(abs(a - b) for a, b in zip(ref.gammas, gammas)) > 1e-3, ref.gammas
    for level, level_rates in ref.rates.items():
        assert max(abs(r - hyper["lr"]) for r in level_rates.values()) > 1e-2 * hyper["lr"], level
    return ref
