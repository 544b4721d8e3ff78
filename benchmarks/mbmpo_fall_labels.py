"""How often do an MB-MPO run's real episodes fall, and can a classifier tell where? (diagnosis aid)

For run directories with a checkpoint, on the real dataset the checkpoint holds:
1. the rows are cut back into the chunks they were collected in (the random warm-up, then
   ``num_steps`` per env and iteration; every env starts together and, on tasks without
   termination, episodes last ``max_episode_steps``), and each chunk is labelled with
   :func:`mbmpo.returns.fall_ahead` as training does, for every ``--windows`` W;
2. for the first W, a fresh fall-hazard classifier (:func:`mbmpo.mbmpo.extensions.fall_hazard.fit_hazard`, the
   run's feature normalization) is fitted on the first ``--train-fraction`` of the rows and
   scored on the rest: ROC AUC and the mean predicted probability of rows labelled 1 and 0.

Prints and writes ``fall_labels.json`` to ``--out``.

    python benchmarks/mbmpo_fall_labels.py runs/tvimag_s0 runs/tvimag_s1 --out benchmarks/results/mbmpo_fall_labels
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402

from mbmpo import MBMPO  # noqa: E402
from mbmpo.mbmpo.extensions.fall_hazard import fit_hazard  # noqa: E402
from mbmpo.mbmpo.extensions.falls import fall_ahead  # noqa: E402
from policies.value import MLPValue  # noqa: E402


def chunk_labels(algo: MBMPO, window: int, min_drop: float, horizon: int) -> torch.Tensor:
    """``[size]`` labels of the dataset's rows (oldest first), labelled chunk by chunk."""
    c = algo.config
    n_env = c.num_envs
    ep_len = gym.spec(c.env_id).max_episode_steps
    warm = math.ceil(c.warmup_steps / n_env) if c.warmup_steps > 0 else 0
    total_rows = algo.num_timesteps
    chunks, start = [], 0  # (first per-env step, steps) of every collected chunk
    if warm:
        chunks.append((0, warm))
        start = warm
    while start * n_env < total_rows:
        chunks.append((start, c.num_steps))
        start += c.num_steps
    rewards = algo.dataset.arrays()["reward"]
    size = len(rewards)
    first_row = total_rows - size
    out = torch.full((size,), float("nan"), dtype=torch.float64)
    for s0, steps in chunks:
        r0 = s0 * n_env - first_row
        if r0 < 0:  # a chunk partly dropped from the FIFO dataset: its rows stay NaN
            continue
        g = s0 + torch.arange(steps)  # per-env step since the start
        ts = (g % ep_len).unsqueeze(1).expand(steps, n_env)
        dones = (g % ep_len == ep_len - 1).unsqueeze(1).expand(steps, n_env)
        y = fall_ahead(rewards[r0 : r0 + steps * n_env].view(steps, n_env), dones, ts, window, min_drop, horizon)
        out[r0 : r0 + steps * n_env] = y.reshape(-1)
    return out


def auc(p: torch.Tensor, y: torch.Tensor) -> float:
    """ROC AUC of scores ``p`` for 0/1 labels ``y`` (Mann-Whitney U, ties not averaged)."""
    ranks = torch.empty_like(p)
    ranks[p.argsort()] = torch.arange(len(p), dtype=p.dtype)
    pos = float(y.sum())
    neg = len(y) - pos
    return float((ranks[y == 1].sum() - pos * (pos - 1) / 2) / (pos * neg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories (or checkpoint files)")
    ap.add_argument("--windows", type=int, nargs="+", default=[100, 25])
    ap.add_argument("--min-drop", type=float, default=2.0)
    ap.add_argument("--horizon", type=int, default=50)
    ap.add_argument("--train-fraction", type=float, default=0.8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for run in args.runs:
        algo = MBMPO.load(run, console=False)
        row = {"run": run, "real_steps": algo.num_timesteps, "rows": len(algo.dataset), "windows": {}}
        labels = {}
        for w in args.windows:
            y = chunk_labels(algo, w, args.min_drop, args.horizon)
            labels[w] = y
            known = y[y.isfinite()]
            row["windows"][w] = {"known_rows": len(known), "rate": float(known.mean()) if len(known) else None}
        y = labels[args.windows[0]]
        x = algo.features(algo.dataset.arrays()["next_obs"]).float()
        cut = int(args.train_fraction * len(y))
        torch.manual_seed(args.seed)
        net = MLPValue(x.shape[1], algo.config.value_hidden_sizes, algo.config.activation, algo.config.ortho_init)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        fit = fit_hazard(net, opt, x[:cut], y[:cut], args.epochs, generator=torch.Generator().manual_seed(args.seed))
        with torch.no_grad():
            p = torch.sigmoid(net(x[cut:])).double()
        yt = y[cut:]
        m = yt.isfinite()
        p, yt = p[m], yt[m]
        row["classifier"] = {"window": args.windows[0], "train_rows": cut, **fit, "test_known_rows": len(yt),
                             "test_rate": float(yt.mean()), "auc": auc(p, yt),
                             "mean_p_label1": float(p[yt == 1].mean()), "mean_p_label0": float(p[yt == 0].mean())}
        results.append(row)
        algo.close()
        print(json.dumps(row))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fall_labels.json").write_text(json.dumps({"args": vars(args), "runs": results}, indent=1))


if __name__ == "__main__":
    main()
