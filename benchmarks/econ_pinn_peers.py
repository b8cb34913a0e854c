"""Peers of benchmarks/econ_pinn.py: DeepXDE and jinns on the same two HJB problems.

Requirements (installed into the project venv; neither changes jax, jaxlib or numpy):

    pip install deepxde==1.15.0 jinns==1.10.2

DeepXDE runs on its PyTorch backend (DDE_BACKEND=pytorch is set here, before the
import), with the CPU torch already in the venv. jinns 1.10.2 needs jax>=0.8.1,
optax>=0.2.6, equinox>=0.13.2, numpy>=2 (it also pulls pyright and pytest>=9.0.2).

One (peer, problem) per process, so that each peak RSS and each thread setting is
its own, and torch and jax never share a process:

    python benchmarks/econ_pinn_peers.py --peer deepxde --problem cake --json OUT.json
    python benchmarks/econ_pinn_peers.py --peer jinns --problem merton --json OUT.json

The problems, network, loss, point sets and accuracy measures are those of the
benchmark's brief; the numpy-only pieces (constants, closed forms, point sets, error
measures: PROBLEMS, collocation_points, eval_points, rel_errors) import without
torch or jax, so that econ_pinn.py can use the very same definitions.

- cake: V(a) = u(a) exp(N(2a/T - 1)) / rho (T = 4; merton: T = 40),
  c = max(V', 1e-12)^(-1/gamma),
  R = (rho V - u(c) - V' (r a - c)) / (rho |V|).
- merton: the same in W, plus the risky share's term
  + (mu - r)^2 V_W^2 / (2 sigma^2 V_WW) in the numerator of R.
- Loss: mean R^2 over 128 points log-spaced on [1e-3, 4] and 128 evenly spaced
  points on [0.1, 4] (full batch, fixed).
- Accuracy: relative L2 errors of V, c (and pi for merton) on 1000 evenly spaced
  points of [0.1, 4]; targets V <= 1e-4, c <= 1e-3, pi <= 1e-3.
- Training: Adam (lr 1e-3) for up to --adam-steps, then L-BFGS for up to
  --lbfgs-steps, each library's own optimiser driven through its own training
  entry point (DeepXDE: Model.compile/Model.train; jinns: jinns.solve with optax).
  Float64 throughout.

Timing. The clock starts after imports and model construction (building the net,
data and loss objects is not timed; compiling and the first step are) and stops
at every checkpoint (every --checkpoint-every steps) while the accuracy is
evaluated, so evaluation never counts. time_to_target_s is the training time at
the first checkpoint where every target holds (null if none does).

- DeepXDE: one Model.train call per phase; checkpoints come from a
  dde.callbacks.Callback. For L-BFGS DeepXDE calls torch.optim.LBFGS.step() in
  chunks of LBFGS_options["iter_per_step"] iterations (1000 by default); that is
  set to --checkpoint-every, the torch optimiser keeps its state between chunks.
  DeepXDE's own loss report (Model._test, every display_every = checkpoint steps)
  stays inside the clock: it is part of its training loop.
- jinns: jinns.solve runs its whole loop in one compiled lax.while_loop, so a
  checkpoint means calling solve once per chunk of --checkpoint-every steps,
  passing the optimiser state on. Each call compiles again; a single call per
  phase would compile once. jinns prints its own split ("Compilation took",
  "Training took", ahead_of_time=True); the clock counts the whole wall time of
  the first call of each phase (set-up + compilation + steps) and only the
  "Training took" part of the later calls. The raw wall time of all calls and
  the overhead left out are reported too.
"""

import argparse
import contextlib
import importlib.metadata
import io
import json
import os
import platform
import re
import resource
import sys
import time


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peer", choices=["deepxde", "jinns"], required=True)
    ap.add_argument("--problem", choices=["cake", "merton"], required=True)
    ap.add_argument("--json", help="write the result here (else: stdout)")
    ap.add_argument("--adam-steps", type=int, default=3000)
    ap.add_argument("--lbfgs-steps", type=int, default=3000)
    ap.add_argument("--checkpoint-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="for torch and XLA")
    ap.add_argument(
        "--stop-at-target",
        action="store_true",
        help="stop at the first checkpoint that meets the targets",
    )
    return ap.parse_args(argv)


def _set_threads(cfg):
    """Thread settings: must be in place before numpy's BLAS, torch or jax load."""
    flag = "--xla_cpu_multi_thread_eigen=false"
    if cfg.threads == 1 and flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(cfg.threads))


CFG = parse_args() if __name__ == "__main__" else None
if CFG is not None:
    _set_threads(CFG)

import numpy as np  # noqa: E402


# ----------------------------------------------------------------------------------
# Problems: constants, closed forms, point sets, error measures (numpy only)
# ----------------------------------------------------------------------------------

CAKE = dict(gamma=2.0, rho=0.05, r=0.03)
MERTON = dict(gamma=2.0, rho=0.05, r=0.02, mu=0.07, sigma=0.2)


def _cake_closed_form(p):
    g = p["gamma"]
    kappa = (p["rho"] - (1 - g) * p["r"]) / g  # 0.04
    return dict(
        kappa=kappa,
        V=lambda a: kappa ** (-g) * a ** (1 - g) / (1 - g),
        c=lambda a: kappa * a,
    )


def _merton_closed_form(p):
    g, rho, r, mu, s = p["gamma"], p["rho"], p["r"], p["mu"], p["sigma"]
    nu = rho / g - (1 - g) * ((mu - r) ** 2 / (2 * s**2 * g**2) + r / g)  # 0.0428125
    pi_star = (mu - r) / (g * s**2)  # 0.625
    return dict(
        nu=nu,
        pi_star=pi_star,
        V=lambda w: nu ** (-g) * w ** (1 - g) / (1 - g),
        c=lambda w: nu * w,
        pi=lambda w: np.full_like(w, pi_star),
    )


PROBLEMS = {
    "cake": dict(params=CAKE, closed=_cake_closed_form(CAKE)),
    "merton": dict(params=MERTON, closed=_merton_closed_form(MERTON)),
}
TARGETS = {"V": 1e-4, "c": 1e-3, "pi": 1e-3}
C_FLOOR = 1e-12  # V' is floored here before c = V'^(-1/gamma)


# The upper end of the training domain. Merton's wealth drifts up under the optimal
# policy, so the missing condition at the top of a truncated domain does its damage
# there: every library trains on [0, 40] and is scored on [0.1, 4].
TRAIN_MAX = {"cake": 4.0, "merton": 40.0}


def collocation_points(problem="cake"):
    """The fixed training set, shape (256,): 128 log-spaced points on [1e-3, T] and
    128 evenly spaced points on [0.1, T] (both ends included), T = TRAIN_MAX."""
    top = TRAIN_MAX[problem]
    return np.concatenate([np.geomspace(1e-3, top, 128), np.linspace(0.1, top, 128)])


def feature(a, problem):
    """The network's input: a mapped from [0, T] to [-1, 1]."""
    return 2 * a / TRAIN_MAX[problem] - 1


def eval_points():
    """The accuracy set, shape (1000,): evenly spaced on [0.1, 4]."""
    return np.linspace(0.1, 4.0, 1000)


def policies(problem, x, V, V_x, V_xx):
    """Consumption (and the risky share for merton) from V and its derivatives, by
    the first-order conditions, as used in the residual."""
    p = PROBLEMS[problem]["params"]
    out = {"c": np.maximum(V_x, C_FLOOR) ** (-1.0 / p["gamma"])}
    if problem == "merton":
        out["pi"] = -(p["mu"] - p["r"]) * V_x / (p["sigma"] ** 2 * x * V_xx)
    return out


def rel_errors(problem, x, V, V_x, V_xx):
    """Relative L2 errors ||f - f*|| / ||f*|| of V, c (and pi) on the points x."""
    closed = PROBLEMS[problem]["closed"]
    got = {"V": V, **policies(problem, x, V, V_x, V_xx)}

    def rel(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    return {k: rel(np.asarray(v, np.float64), closed[k](x)) for k, v in got.items()}


def peak_rss_mib():
    """Peak resident memory of this process in MiB: VmHWM from /proc (reset by
    exec, unlike getrusage's ru_maxrss, which a child started by a big parent
    inherits), or ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def targets_met(problem, errs):
    keys = ("V", "c", "pi") if problem == "merton" else ("V", "c")
    return all(np.isfinite(errs[k]) and errs[k] <= TARGETS[k] for k in keys)


# ----------------------------------------------------------------------------------
# The clock and the checkpoint record, shared by both peers
# ----------------------------------------------------------------------------------


class Recorder:
    """Keeps the training clock (evaluation excluded) and the checkpoint list."""

    def __init__(self, problem, stop_at_target=False):
        self.problem = problem
        self.stop_at_target = stop_at_target
        self.checkpoints = []
        self.time_to_target = None
        self.target_step = None
        self.eval_time = 0.0

    def add(self, step, phase, train_time, loss, evaluate):
        """Record a checkpoint at `train_time` seconds of training; `evaluate()`
        returns (x, V, V_x, V_xx) as numpy arrays and is timed separately."""
        t0 = time.perf_counter()
        x, V, V_x, V_xx = evaluate()
        errs = rel_errors(self.problem, x, V, V_x, V_xx)
        self.eval_time += time.perf_counter() - t0
        entry = dict(
            step=int(step),
            phase=phase,
            time_s=float(train_time),
            loss=float(loss),
            **{f"err_{k}": v for k, v in errs.items()},
        )
        self.checkpoints.append(entry)
        if self.time_to_target is None and targets_met(self.problem, errs):
            self.time_to_target = float(train_time)
            self.target_step = int(step)
        return entry

    @property
    def done(self):
        return self.stop_at_target and self.time_to_target is not None


def _versions(packages):
    out = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
    }
    for pkg in packages:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


# ----------------------------------------------------------------------------------
# DeepXDE (PyTorch backend)
# ----------------------------------------------------------------------------------


def run_deepxde(cfg):
    os.environ["DDE_BACKEND"] = "pytorch"
    import deepxde as dde
    import torch
    import torch._dynamo  # noqa: F401  imported lazily by the first torch optimiser
    # (about 2.5 s here): an import, so it is done before the clock starts

    torch.set_num_threads(cfg.threads)
    dde.config.set_default_float("float64")
    dde.config.set_random_seed(cfg.seed)
    p = PROBLEMS[cfg.problem]["params"]
    gamma, rho, r = p["gamma"], p["rho"], p["r"]

    def util(c):
        return c ** (1 - gamma) / (1 - gamma)

    def residual(x, V):
        # DeepXDE's autodiff: dde.grad.jacobian / dde.grad.hessian of the output
        # with respect to the input (reverse mode, cached between the two calls).
        V_x = dde.grad.jacobian(V, x, i=0, j=0)
        c = torch.clamp(V_x, min=C_FLOOR) ** (-1.0 / gamma)
        num = rho * V - util(c) - V_x * (r * x - c)
        if cfg.problem == "merton":
            V_xx = dde.grad.hessian(V, x, i=0, j=0)
            num = num + (p["mu"] - r) ** 2 * V_x**2 / (2 * p["sigma"] ** 2 * V_xx)
        return num / (rho * torch.abs(V))

    # The fixed point set, given as anchors: no sampling by DeepXDE (num_domain=0),
    # no boundary condition (the output transform holds the state constraint).
    geom = dde.geometry.Interval(1e-3, TRAIN_MAX[cfg.problem])
    data = dde.data.PDE(
        geom,
        residual,
        [],
        num_domain=0,
        num_boundary=0,
        anchors=collocation_points(cfg.problem)[:, None],
    )
    net = dde.nn.FNN([1, 32, 32, 32, 1], "tanh", "Glorot normal")
    net.apply_feature_transform(lambda x: feature(x, cfg.problem))
    net.apply_output_transform(lambda x, n: util(x) * torch.exp(n) / rho)
    model = dde.Model(data, net)

    x_eval = eval_points()
    xt = torch.tensor(x_eval[:, None], dtype=torch.float64)

    def evaluate():
        x = xt.clone().requires_grad_(True)
        V = model.net(x)
        (V_x,) = torch.autograd.grad(V.sum(), x, create_graph=True)
        (V_xx,) = torch.autograd.grad(V_x.sum(), x)
        return (
            x_eval,
            V.detach().numpy()[:, 0],
            V_x.detach().numpy()[:, 0],
            V_xx.numpy()[:, 0],
        )

    rec = Recorder(cfg.problem, cfg.stop_at_target)
    every = cfg.checkpoint_every
    state = dict(
        phase="adam",
        steps={"adam": 0, "lbfgs": 0},
        paused=0.0,
        first_step_s=None,
        t0=None,
    )

    def clock():
        return time.perf_counter() - state["t0"] - state["paused"]

    class Checkpoints(dde.callbacks.Callback):
        """Evaluates the accuracy every `every` steps (Adam) or after every L-BFGS
        chunk, with the clock paused."""

        def on_batch_end(self):
            if state["first_step_s"] is None:
                state["first_step_s"] = clock()

        def on_epoch_end(self):
            ts = self.model.train_state
            phase = state["phase"]
            if phase == "adam":
                state["steps"]["adam"] += 1
                if state["steps"]["adam"] % every:
                    return
            else:  # one L-BFGS chunk: read the iterations torch actually made
                state["steps"]["lbfgs"] = int(
                    self.model.opt.state_dict()["state"][0]["n_iter"]
                )
            t = clock()
            t_pause = time.perf_counter()
            rec.add(
                sum(state["steps"].values()),
                phase,
                t,
                float(np.sum(ts.loss_train)),
                evaluate,
            )
            state["paused"] += time.perf_counter() - t_pause
            if rec.done:
                self.model.stop_training = True

    cb = Checkpoints()
    state["t0"] = time.perf_counter()
    model.compile("adam", lr=1e-3)
    model.train(
        iterations=cfg.adam_steps, display_every=every, callbacks=[cb], verbose=0
    )
    adam_end = clock()
    if not rec.done and cfg.lbfgs_steps > 0:
        state["phase"] = "lbfgs"
        # DeepXDE's documented L-BFGS settings (defaults except maxiter); the chunk
        # length of torch's LBFGS.step() is DeepXDE's iter_per_step, set here to
        # the checkpoint spacing (fun_per_step keeps DeepXDE's 1.25 ratio).
        dde.optimizers.set_LBFGS_options(maxiter=cfg.lbfgs_steps)
        opts = dde.optimizers.config.LBFGS_options
        opts["iter_per_step"] = min(every, cfg.lbfgs_steps)
        opts["fun_per_step"] = opts["maxfun"] * opts["iter_per_step"] // opts["maxiter"]
        model.compile("L-BFGS")
        model.train(callbacks=[cb], verbose=0)
        # DeepXDE leaves its loop without calling the callbacks when torch's
        # tolerances stop a chunk after one iteration: read the count here too.
        state["steps"]["lbfgs"] = int(model.opt.state_dict()["state"][0]["n_iter"])
    total = clock()

    final_loss = float(np.sum(model.train_state.loss_train))
    last = rec.checkpoints[-1] if rec.checkpoints else None
    if last is None or last["step"] != sum(state["steps"].values()):
        last = rec.add(
            sum(state["steps"].values()), state["phase"], total, final_loss, evaluate
        )
    notes = [
        "Output transform exactly as specified: net.apply_output_transform("
        "lambda x, n: u(x)*exp(n)/rho); input normalisation by "
        "net.apply_feature_transform(lambda x: x/2 - 1).",
        "Float64: dde.config.set_default_float('float64') (torch default dtype).",
        "Initialisation: 'Glorot normal' (DeepXDE's usual choice); seed via "
        "dde.config.set_random_seed.",
        "L-BFGS: torch.optim.LBFGS through DeepXDE with its defaults (history 100, "
        "strong Wolfe line search, max 50 line-search steps, gtol 1e-8, ftol 0, "
        "lr 1) and maxiter=--lbfgs-steps; DeepXDE stops early when a chunk makes "
        "a single iteration (torch's tolerances reached).",
        "DeepXDE's LBFGS_options['iter_per_step'] (the chunk of iterations per "
        "torch LBFGS.step() call, 1000 by default) is set to the checkpoint "
        "spacing so that accuracy can be read every --checkpoint-every "
        "iterations; torch keeps the L-BFGS state across chunks.",
        "Steps: L-BFGS steps are torch's iteration count (n_iter); each may use "
        "several loss/gradient evaluations in the line search. DeepXDE's loop "
        "runs whole chunks while n_iter < maxiter, so it can end up to one chunk "
        "past --lbfgs-steps, and a chunk can end early on its evaluation budget "
        "(fun_per_step).",
        "torch.optim.LBFGS stores a curvature pair only when y.s > 1e-10, an "
        "absolute threshold (torch/optim/lbfgs.py); with this loss (mean R^2 "
        "~1e-8 after the first L-BFGS iterations) its memory stops being "
        "refreshed and progress nearly stops: what DeepXDE's defaults give here, "
        "reported as is.",
    ]
    return dict(
        versions=_versions(["deepxde", "torch", "numpy", "scipy"]),
        backend=dde.backend.backend_name,
        torch_threads=torch.get_num_threads(),
        wall_time_s=total,
        adam_time_s=adam_end,
        lbfgs_time_s=total - adam_end,
        first_step_s=state["first_step_s"],
        compile_s=None,
        steps=dict(
            adam=state["steps"]["adam"],
            lbfgs=state["steps"]["lbfgs"],
            total=sum(state["steps"].values()),
        ),
        final_loss=final_loss,
        last=last,
        rec=rec,
        notes=notes,
    )


# ----------------------------------------------------------------------------------
# jinns (JAX, optax)
# ----------------------------------------------------------------------------------

_TIMING = re.compile(
    r"(Initialization time:|Compilation took|Training took)\s*([0-9.eE+-]+)"
)


def _parse_jinns_timings(text):
    """jinns.solve(verbose=True) prints its set-up, compilation and training times."""
    out = {}
    for key, val in _TIMING.findall(text):
        out[key.split()[0].lower()] = float(val)
    return out  # keys: initialization, compilation, training


def run_jinns(cfg):
    import warnings

    import jax

    jax.config.update("jax_enable_x64", True)
    warnings.filterwarnings("ignore", message="Missing boundary condition")
    import equinox as eqx
    import jax.numpy as jnp
    import jinns
    import optax

    p = PROBLEMS[cfg.problem]["params"]
    gamma, rho, r = p["gamma"], p["rho"], p["r"]

    def util(c):
        return c ** (1 - gamma) / (1 - gamma)

    key = jax.random.PRNGKey(cfg.seed)
    key, k_net, k_data = jax.random.split(key, 3)
    eqx_list = (
        (eqx.nn.Linear, 1, 32),
        (jax.nn.tanh,),
        (eqx.nn.Linear, 32, 32),
        (jax.nn.tanh,),
        (eqx.nn.Linear, 32, 32),
        (jax.nn.tanh,),
        (eqx.nn.Linear, 32, 1),
    )
    # jinns' own input/output transforms: x = 2a/T - 1 in, V = u(a) exp(N) / rho out
    # (the output transform receives the untransformed input a).
    u, nn_params = jinns.nn.PINN_MLP.create(
        key=k_net,
        eqx_list=eqx_list,
        eq_type="PDEStatio",
        input_transform=lambda a, _params: feature(a, cfg.problem),
        output_transform=lambda a, n, _params: util(a[0]) * jnp.exp(n) / rho,
    )
    params = jinns.parameters.Params(nn_params=nn_params, eq_params={})

    problem = cfg.problem

    class HJB(jinns.loss.PDEStatio):
        """The normalised HJB residual at one point x of shape (1,)."""

        def equation(self, x, u, params):
            def V_of(y):
                return u(y, params)[0]

            V, V_x = jax.value_and_grad(V_of)(x)
            V_x = V_x[0]
            a = x[0]
            c = jnp.maximum(V_x, C_FLOOR) ** (-1.0 / gamma)
            num = rho * V - util(c) - V_x * (r * a - c)
            if problem == "merton":
                V_xx = jax.hessian(V_of)(x)[0, 0]
                num = num + (p["mu"] - r) ** 2 * V_x**2 / (2 * p["sigma"] ** 2 * V_xx)
            return jnp.atleast_1d(num / (rho * jnp.abs(V)))

    # jinns' stationary data generator, full batch; its sampled points are then
    # replaced by the benchmark's fixed set (no minibatches, so it never resamples).
    pts = collocation_points(cfg.problem)
    data = jinns.data.CubicMeshPDEStatio(
        key=k_data,
        n=pts.size,
        dim=1,
        min_pts=(1e-3,),
        max_pts=(TRAIN_MAX[cfg.problem],),
        method="uniform",
    )
    data = eqx.tree_at(lambda d: d.omega, data, jnp.asarray(pts)[:, None])
    loss = jinns.loss.LossPDEStatio(
        u=u,
        dynamic_loss=HJB(),
        params=params,
        loss_weights=jinns.loss.LossWeightsPDEStatio(dyn_loss=1.0),
    )

    x_eval = eval_points()

    @jax.jit
    def _eval(params):
        def V_of(y):
            return u(y, params)[0]

        xs = jnp.asarray(x_eval)[:, None]
        V = jax.vmap(V_of)(xs)
        V_x = jax.vmap(jax.grad(V_of))(xs)[:, 0]
        V_xx = jax.vmap(jax.hessian(V_of))(xs)[:, 0, 0]
        return V, V_x, V_xx

    current = {"params": params}

    def evaluate():
        V, V_x, V_xx = (np.asarray(v) for v in _eval(current["params"]))
        return x_eval, V, V_x, V_xx

    # L-BFGS through jinns.solve as its tutorial shows: optax.lbfgs() with value,
    # grad and value_fn handed over by extra_optax_args_and_kwargs.
    def callback_value_fn(params, batch, loss):
        return loss.evaluate(params, batch)[0]

    lbfgs_extra = {
        "value": jinns.solver.GetJinnsVariableName("train_loss_value"),
        "grad": jinns.solver.GetJinnsVariableName("grads"),
        "value_fn": callback_value_fn,
        "batch": jinns.solver.GetJinnsVariableName("batch"),
        "loss": jinns.solver.GetJinnsVariableName("loss"),
    }
    phases = [
        ("adam", optax.adam(1e-3), cfg.adam_steps, None),
        ("lbfgs", optax.lbfgs(), cfg.lbfgs_steps, lbfgs_extra),
    ]

    rec = Recorder(cfg.problem, cfg.stop_at_target)
    clock = 0.0  # training time as a single solve() per phase would spend it
    raw_wall = 0.0  # every solve() call, end to end
    compile_first = {}  # phase -> jinns' compile time of its first call
    steps = {"adam": 0, "lbfgs": 0}
    final_loss = float("nan")
    phase_times = {}
    chunks = []  # every solve() call: its wall time and jinns' own split of it
    for phase, tx, n_steps, extra in phases:
        opt_state = None
        t_phase = clock
        first = True
        while steps[phase] < n_steps and not rec.done:
            chunk = min(cfg.checkpoint_every, n_steps - steps[phase])
            buf = io.StringIO()
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(buf):
                out = jinns.solve(
                    init_params=current["params"],
                    data=data,
                    loss=loss,
                    optimizer=tx,
                    n_iter=chunk,
                    opt_state=opt_state,
                    print_loss_every=chunk,
                    verbose=True,
                    ahead_of_time=True,
                    extra_optax_args_and_kwargs=extra,
                )
                jax.block_until_ready(out[0])
            wall = time.perf_counter() - t0
            tm = _parse_jinns_timings(buf.getvalue())
            chunks.append(
                dict(
                    phase=phase,
                    steps=chunk,
                    wall_s=wall,
                    **{f"{k}_s": v for k, v in tm.items()},
                )
            )
            raw_wall += wall
            if first:
                clock += wall
                compile_first[phase] = tm.get("compilation")
                first = False
            else:
                clock += tm.get("training", wall)
            current["params"], loss_values = out[0], np.asarray(out[1])
            data, loss, opt_state = out[3], out[4], out[5]
            steps[phase] += chunk
            final_loss = float(loss_values[-1])
            if not np.isfinite(final_loss):
                break
            rec.add(sum(steps.values()), phase, clock, final_loss, evaluate)
        phase_times[phase] = clock - t_phase

    last = rec.checkpoints[-1]
    notes = [
        "Output transform exactly as specified, through jinns' own PINN_MLP "
        "input_transform (2a/T - 1) and output_transform (u(a) exp(N) / rho).",
        "Float64: jax_enable_x64 before any array is made (network, points, loss).",
        "Initialisation: equinox's default for eqx.nn.Linear (uniform, "
        "+-1/sqrt(fan_in)), jinns' PINN_MLP.create; seed via jax.random.PRNGKey.",
        "Fixed points: jinns.data.CubicMeshPDEStatio(n=256, full batch) with its "
        "sampled omega replaced by the benchmark's fixed set (eqx.tree_at); jinns "
        "has no constructor argument for user-given collocation points.",
        "L-BFGS: optax.lbfgs() with its defaults (memory 10, zoom line search, up "
        "to 20 line-search steps) through jinns.solve and "
        "extra_optax_args_and_kwargs, as in jinns' Adam + LBFGS tutorial; jinns "
        "has no convergence stop, so it always runs --lbfgs-steps iterations.",
        "Checkpoint loss: the last value of jinns' loss history of the chunk "
        "(computed before that step's update).",
        "Checkpoints need one jinns.solve call per chunk and each call compiles "
        "again; the clock counts the first call of each phase whole and only the "
        "'Training took' part of later calls (see chunk_overhead_excluded_s).",
    ]
    return dict(
        versions=_versions(["jinns", "jax", "jaxlib", "optax", "equinox", "numpy"]),
        jax_backend=jax.default_backend(),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        wall_time_s=clock,
        raw_wall_time_s=raw_wall,
        chunk_overhead_excluded_s=raw_wall - clock,
        adam_time_s=phase_times.get("adam"),
        lbfgs_time_s=phase_times.get("lbfgs"),
        first_step_s=None,
        compile_s=compile_first,
        steps=dict(adam=steps["adam"], lbfgs=steps["lbfgs"], total=sum(steps.values())),
        final_loss=final_loss,
        solve_calls=chunks,
        last=last,
        rec=rec,
        notes=notes,
    )


# ----------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------


def peer_command(peer, problem, json_path, python=None, **options):
    """The argv that runs one (peer, problem) in its own process, e.g. from
    econ_pinn.py: subprocess.run(peer_command("jinns", "cake", "out.json",
    threads=1), check=True), then json.load the file. Options are the long flags
    with underscores: adam_steps, lbfgs_steps, checkpoint_every, seed, threads,
    stop_at_target (bool)."""
    argv = [
        python or sys.executable,
        os.path.abspath(__file__),
        "--peer",
        peer,
        "--problem",
        problem,
        "--json",
        str(json_path),
    ]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False and value is not None:
            argv += [flag, str(value)]
    return argv


def main(argv=None):
    cfg = CFG if argv is None and CFG is not None else parse_args(argv)
    _set_threads(cfg)  # idempotent: already done at import when run as a script

    run = run_deepxde if cfg.peer == "deepxde" else run_jinns
    res = run(cfg)
    rec, last = res.pop("rec"), res.pop("last")
    errs = {k[4:]: v for k, v in last.items() if k.startswith("err_")}
    best = {k: min(c[f"err_{k}"] for c in rec.checkpoints) for k in errs}
    out = dict(
        peer=cfg.peer,
        problem=cfg.problem,
        versions=res.pop("versions"),
        settings=dict(
            problem_params=PROBLEMS[cfg.problem]["params"],
            network="MLP 1-32-32-32-1, tanh, x = 2a/T - 1, V = u(a) exp(N) / rho",
            collocation="128 geomspace[1e-3, 4] + 128 linspace[0.1, 4], full batch",
            eval_points="1000 linspace[0.1, 4]",
            loss="mean R^2, R normalised by rho |V|",
            dtype="float64",
            adam_lr=1e-3,
            adam_steps_max=cfg.adam_steps,
            lbfgs_steps_max=cfg.lbfgs_steps,
            checkpoint_every=cfg.checkpoint_every,
            seed=cfg.seed,
            threads=cfg.threads,
            stop_at_target=cfg.stop_at_target,
            targets={
                k: v for k, v in TARGETS.items() if k != "pi" or cfg.problem == "merton"
            },
        ),
        time_to_target_s=rec.time_to_target,
        target_step=rec.target_step,
        final_errors=errs,
        best_errors=best,
        final_loss=res.pop("final_loss"),
        steps=res.pop("steps"),
        wall_time_s=res.pop("wall_time_s"),
        eval_time_excluded_s=rec.eval_time,
        peak_rss_mib=peak_rss_mib(),
        notes=res.pop("notes"),
        **res,
        checkpoints=rec.checkpoints,
    )
    text = json.dumps(out, indent=1)
    if cfg.json:
        with open(cfg.json, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    ttt = out["time_to_target_s"]
    print(
        f"{cfg.peer}/{cfg.problem}: time_to_target="
        f"{'null' if ttt is None else f'{ttt:.2f}s'} final={errs} "
        f"steps={out['steps']} wall={out['wall_time_s']:.2f}s "
        f"rss={out['peak_rss_mib']:.0f}MiB",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
