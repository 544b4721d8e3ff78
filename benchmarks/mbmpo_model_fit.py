"""How well do an MB-MPO run's models predict the data its policy collects next?

A diagnosis aid. Takes two checkpoints of one run, an earlier
one (its models and dataset of n rows) and a later one whose dataset holds the same rows
followed by the real data collected after the earlier checkpoint. The rows after n are
data the earlier models never saw, gathered by the policy being trained: the states the
imagined MDPs must get right. Starting from the earlier checkpoint's models, each scheme
refits on the n rows and is measured on the next ``--next-rows`` rows:

* ``as_run``: the run's own fit (its ``FitConfig``: a fresh random split, early stopping);
* ``fixed``: no early stopping, every model trained ``--epochs`` epochs on all n rows,
  measured after every epoch;
* ``fresh_<type>`` (with ``--fresh TYPE ...``): newly initialized models of that type
  (``deterministic`` or ``probabilistic``, the ``model_type`` option) trained the same way,
  measured every ``--measure-every`` epochs; probabilistic models are measured with their
  means and with draws (``open_loop_sampled``: each step draws from the Gaussian, as the
  imagined MDPs do).

Measures: 1-step MSE in the ensemble's normalized Δobs space (1.0 = predicting the mean
change), and the open-loop error of H-step predictions along the next rows' real
trajectories (real actions replayed; RMS over observation dims in units of each dim's
std), and the error of the predicted H-step return (what the policy optimizes), at
H = ``--horizons`` and the run's imagined horizon. Writes ``model_fit_<early>.json``
to ``--out`` (``model_fit_<early>_fresh.json`` with ``--fresh``, which skips the other
schemes).

    python benchmarks/mbmpo_model_fit.py runs/ckpts/std0.2_s0_54000.pt runs/ckpts/std0.2_s0_100k.pt \\
        --out benchmarks/results/mbmpo_model_fit
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from dynamics.ensemble import DynamicsEnsemble  # noqa: E402
from dynamics.reward_fns import RewardFn  # noqa: E402
from dynamics.trainer import fit_ensemble  # noqa: E402
from mbmpo import MBMPO  # noqa: E402


def one_step_mse(ens: DynamicsEnsemble, data: dict[str, Tensor]) -> list[float]:
    """Per-model MSE of the normalized Δobs on ``data`` (rows ``[B, ...]``)."""
    with torch.no_grad():
        x = ens.in_rms.normalize(ens.inputs(data["obs"], data["act"]).float())
        y = ens.out_rms.normalize(ens.targets(data["obs"], data["next_obs"]).float())
        return [(ens.forward_model(k, x) - y).pow(2).mean().item() for k in range(ens.num_models)]


def trajectories(data: dict[str, Tensor], num_envs: int) -> list[tuple[Tensor, Tensor]]:
    """Split time-major rows (``[T * num_envs]``, env fastest) into contiguous pieces
    ``(obs [L+1, D], act [L, A])``, cut where next_obs[t] differs from obs[t+1]."""
    out = []
    for j in range(num_envs):
        obs, act, nxt = data["obs"][j::num_envs], data["act"][j::num_envs], data["next_obs"][j::num_envs]
        breaks = [0] + [t + 1 for t in range(len(obs) - 1) if not torch.allclose(nxt[t], obs[t + 1])] + [len(obs)]
        for a, b in zip(breaks[:-1], breaks[1:]):
            out.append((torch.cat([obs[a:b], nxt[b - 1 : b]]), act[a:b]))
    return out


def open_loop_error(ens: DynamicsEnsemble, trajs: list[tuple[Tensor, Tensor]], horizons: list[int],
                    obs_std: Tensor, reward_fn: RewardFn, stride: int = 25,
                    generator: torch.Generator | None = None) -> dict[str, dict[int, float]]:
    """Open-loop predictions from start points every ``stride`` steps, real actions replayed.

    For each h in ``horizons``, means over models and start points of: ``rms``, the RMS
    (over dims, in units of ``obs_std``) state error after h steps; ``real_return`` and
    ``pred_return``, the h-step return (``reward_fn`` on the real and on the predicted
    transitions); ``return_abs_err``, the absolute error of the predicted h-step return.
    ``generator`` makes probabilistic models draw each step instead of using their means.
    """
    hmax = max(horizons)
    acc: dict[str, dict[int, list[float]]] = {m: {h: [] for h in horizons}
                                              for m in ("rms", "real_return", "pred_return", "return_abs_err")}
    with torch.no_grad():
        for obs, act in trajs:
            starts = torch.arange(0, len(act) - hmax + 1, stride)
            if len(starts) == 0:
                continue
            real = torch.stack([reward_fn.reward(obs[starts + h], act[starts + h], obs[starts + h + 1])
                                for h in range(hmax)]).cumsum(0)  # [H, starts]
            for k in range(ens.num_models):
                s = obs[starts]
                ret = torch.zeros(len(starts), dtype=obs.dtype)
                for h in range(1, hmax + 1):
                    a = act[starts + h - 1]
                    nxt, _ = ens.predict_k(k, s, a, generator)
                    ret = ret + reward_fn.reward(s, a, nxt)
                    s = nxt
                    if h in acc["rms"]:
                        acc["rms"][h].extend(((s - obs[starts + h]) / obs_std).pow(2).mean(-1).sqrt().tolist())
                        acc["real_return"][h].extend(real[h - 1].tolist())
                        acc["pred_return"][h].extend(ret.tolist())
                        acc["return_abs_err"][h].extend((ret - real[h - 1]).abs().tolist())
    return {m: {h: sum(v) / max(1, len(v)) for h, v in d.items()} for m, d in acc.items()}


def measure(ens: DynamicsEnsemble, nxt: dict[str, Tensor], trajs, horizons, obs_std, reward_fn) -> dict:
    mse = one_step_mse(ens, nxt)
    out = {"next_mse_mean": sum(mse) / len(mse), "next_mse": mse,
           "open_loop": open_loop_error(ens, trajs, horizons, obs_std, reward_fn)}
    if ens.probabilistic:
        out["open_loop_sampled"] = open_loop_error(ens, trajs, horizons, obs_std, reward_fn,
                                                   generator=torch.Generator().manual_seed(0))
    return out


def fit_fixed_epochs(ens: DynamicsEnsemble, data: dict[str, Tensor], cfg, epochs: int, every: int,
                     gen: torch.Generator, measure_fn) -> list[dict]:
    """Train every model ``epochs`` epochs on all rows (no early stopping, no holdout: the
    next rows are the validation data); ``measure_fn(ens)`` every ``every`` epochs and at the end."""
    rows: list[dict] = []
    t0 = time.perf_counter()

    def after_epoch(epoch: int) -> None:
        if epoch % every and epoch != epochs:
            return
        rows.append({"epoch": epoch, "s": time.perf_counter() - t0, **measure_fn(ens)})
        print(json.dumps({"epoch": epoch, "next_mse": rows[-1]["next_mse_mean"],
                          "open_loop": rows[-1]["open_loop"]}), flush=True)

    n = data["obs"].shape[0]
    fit_ensemble(ens, data["obs"], data["act"], data["next_obs"],
                 config=replace(cfg, max_epochs=epochs, early_stopping=False), generator=gen,
                 val_mask=torch.zeros(n, ens.num_models, dtype=torch.bool), on_epoch=after_epoch)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("early", help="earlier checkpoint of the run (its models and dataset)")
    p.add_argument("late", help="later checkpoint of the same run (dataset continues the earlier one)")
    p.add_argument("--next-rows", type=int, default=4000, help="rows after the earlier dataset to measure on")
    p.add_argument("--epochs", type=int, default=20, help="epochs of the 'fixed' scheme")
    p.add_argument("--horizons", type=int, nargs="+", default=[1, 10, 20, 30],
                   help="open-loop horizons to measure (the run's imagined horizon is added)")
    p.add_argument("--fresh", nargs="+", choices=["deterministic", "probabilistic"], default=[],
                   help="instead of the schemes on the checkpoint's models: fresh models of these types")
    p.add_argument("--measure-every", type=int, default=1, metavar="E", help="epochs between measurements")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/mbmpo_model_fit")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    algo = MBMPO.load(args.early, console=False)
    data = algo.dataset.arrays()
    n = len(algo.dataset)
    late = torch.load(args.late, weights_only=True)["dataset"]
    if late["obs"].shape[0] < n + args.next_rows or not torch.equal(late["obs"][:n], data["obs"]):
        sys.exit(f"{args.late}: its dataset does not continue {args.early}'s {n} rows by {args.next_rows} rows")
    nxt = {k: late[k][n : n + args.next_rows] for k in ("obs", "act", "next_obs")}
    trajs = trajectories(nxt, algo.config.num_envs)
    horizons = sorted({*args.horizons, algo.config.imagined_horizon})
    obs_std = data["obs"].std(0).clamp_min(1e-6)
    warm = copy.deepcopy(algo.ensemble)
    result = {"early": args.early, "late": args.late, "rows": n, "next_rows": args.next_rows,
              "trajectory_pieces": len(trajs), "horizons": horizons,
              "checkpoint_models": measure(warm, nxt, trajs, horizons, obs_std, algo.reward_fn)}
    print(json.dumps({"checkpoint_models": result["checkpoint_models"]["next_mse_mean"]}), flush=True)

    gen = torch.Generator().manual_seed(args.seed)

    def measure_fn(e: DynamicsEnsemble) -> dict:
        return measure(e, nxt, trajs, horizons, obs_std, algo.reward_fn)

    suffix = "_fresh" if args.fresh else ""
    for kind in args.fresh:
        torch.manual_seed(args.seed)
        ens = algo.build_ensemble(kind)
        result[f"fresh_{kind}"] = fit_fixed_epochs(ens, data, algo.fit_config, args.epochs, args.measure_every,
                                                   gen, measure_fn)
    if not args.fresh:
        ens = copy.deepcopy(warm)
        t0 = time.perf_counter()
        res = fit_ensemble(ens, data["obs"], data["act"], data["next_obs"], config=algo.fit_config, generator=gen)
        result["as_run"] = {**measure_fn(ens), "epochs": res.epochs,
                            "fit_s": time.perf_counter() - t0, "val_loss": res.best_val_loss}
        print(json.dumps({"as_run": result["as_run"]["next_mse_mean"], "epochs": res.epochs}), flush=True)
        result["fixed"] = fit_fixed_epochs(copy.deepcopy(warm), data, algo.fit_config, args.epochs,
                                           args.measure_every, gen, measure_fn)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"model_fit_{Path(args.early).stem}{suffix}.json"
    (out / name).write_text(json.dumps(result, indent=1))
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
