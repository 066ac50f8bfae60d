"""Reinforcement learning with KL: PPO and TRPO on CartPole-v1, SAC on Pendulum-v1 (and the discrete SAC on
CartPole-v1), three seeds each, through the library's trainers (what ``kldiv rl ppo|trpo|sac`` runs, defaults).

Per run: wall seconds; the environment step at which the mean return of the last 20 training episodes first
reached the threshold (CartPole-v1: 475, its registered reward threshold; Pendulum-v1: -200) and whether that was
within the budget (PPO 100k steps, TRPO 200k, SAC 20k); the final mean return of the last 20 episodes; the KL
measured after every update against its limit: PPO's exact mean KL(pi_old || pi_new) against ``target_kl`` (early
stopping keeps it near the limit, a step can overshoot it), TRPO's against ``max_kl`` (a hard limit: the line search
accepts no step above it). Returns are those of the training episodes (stochastic policy).

Published figures compared with: the RL Baselines3 Zoo benchmark table (DLR-RM/rl-baselines3-zoo, benchmark.md;
one run each, deterministic evaluation after training): PPO CartPole-v1 500.0 +- 0.0 after 100k steps, TRPO
CartPole-v1 500.0 +- 0.0 after 100k steps, SAC Pendulum-v0 -202.0 +- 60.5 after 20k steps.

Also (``envs``): the seconds per step of 8 CartPole-v1 environments in kldiv's in-process batch against
gymnasium's SyncVectorEnv and AsyncVectorEnv, interleaved rounds.

Run: ``.venv/bin/python -m benchmarks.rl [--part envs|ppo|trpo|sac|sac_discrete|all] [--seeds 0,1,2]`` (about 30
minutes on a quiet 2-core CPU); ``--quick`` (one seed, a tenth of the steps) writes ``rl_quick.json``. Results:
``benchmarks/results/rl.json`` (a run rewrites only the sections it ran).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict
from typing import Any

from benchmarks._common import RESULTS, machine, spread, write_json

REFERENCE = {
    "source": "RL Baselines3 Zoo, benchmark.md (DLR-RM/rl-baselines3-zoo): one run, deterministic evaluation",
    "ppo": "CartPole-v1: 500.0 +- 0.0 after 100k steps",
    "trpo": "CartPole-v1: 500.0 +- 0.0 after 100k steps",
    "sac": "Pendulum-v0: -202.0 +- 60.5 after 20k steps",
}


def _algorithms() -> dict[str, dict[str, Any]]:
    from kldiv.rl import ppo, sac, trpo

    return {
        "ppo": {
            "train": ppo.train,
            "config": ppo.PPOConfig,
            "env": "CartPole-v1",
            "threshold": 475.0,
            "budget": 100_000,
            "limit": "target_kl",
        },
        "trpo": {
            "train": trpo.train,
            "config": trpo.TRPOConfig,
            "env": "CartPole-v1",
            "threshold": 475.0,
            "budget": 200_000,
            "limit": "max_kl",
        },
        "sac": {
            "train": sac.train,
            "config": sac.SACConfig,
            "env": "Pendulum-v1",
            "threshold": -200.0,
            "budget": 20_000,
            "limit": None,
        },
        "sac_discrete": {
            "train": sac.train,
            "config": sac.SACConfig,
            "env": "CartPole-v1",
            "threshold": 475.0,
            "budget": 100_000,
            "limit": None,
        },
    }


def run_algorithm(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``name`` once per seed and summarize."""
    from kldiv.rl.training import steps_to_score
    from kldiv.runs import RunOptions

    spec = _algorithms()[name]
    budget = spec["budget"] // 10 if args.quick else spec["budget"]
    runs = []
    for seed in args.seeds:
        config = spec["config"](env=spec["env"], total_steps=budget, seed=seed, figures=False)
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = spec["train"](config, RunOptions(out=out, overwrite=True, progress=False))
            seconds = time.perf_counter() - start
        reached = steps_to_score(result.episode_steps, result.episode_returns, spec["threshold"])
        recent = result.episode_returns[-20:]
        run: dict[str, Any] = {
            "seed": seed,
            "seconds": seconds,
            "env_steps": result.episode_steps[-1] if result.episode_steps else 0,
            "steps_to_threshold": reached,
            "within_budget": reached is not None and reached <= budget,
            "final_score": sum(recent) / len(recent) if recent else None,
            "episodes": len(result.episode_returns),
        }
        if spec["limit"] is not None:
            limit = getattr(config, spec["limit"])
            kls = [row["kl"] for row in result.updates]
            run |= {
                "kl_limit": limit,
                "kl_max": max(kls),
                "kl_median": statistics.median(kls),
                "updates": len(kls),
                "updates_above_limit": sum(k > limit for k in kls),
            }
            if name == "trpo":
                run["updates_accepted"] = int(sum(row["accepted"] for row in result.updates))
        else:
            run["final_alpha"] = result.metrics[-1]["alpha"]
        runs.append(run)
        print(json.dumps({"algorithm": name, **run}))
    return {
        "env": spec["env"],
        "threshold": spec["threshold"],
        "budget": budget,
        "config": asdict(spec["config"](env=spec["env"], total_steps=budget)),
        "runs": runs,
        "seeds_within_budget": sum(r["within_budget"] for r in runs),
        "seconds": spread([r["seconds"] for r in runs]),
    }


def envs_section(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per step of 8 CartPole-v1 environments with random actions: kldiv's in-process batch against
    gymnasium's SyncVectorEnv and AsyncVectorEnv (one worker process per environment), rounds interleaved."""
    import gymnasium as gym
    import numpy as np
    import torch

    from benchmarks._common import interleaved_rounds, round_ratios
    from kldiv.rl.envs import EnvBatch

    n, steps = 8, 200
    rng = np.random.default_rng(0)
    batch = EnvBatch("CartPole-v1", n, 0)
    sync = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(n)])
    workers = gym.vector.AsyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(n)])
    sync.reset(seed=0)
    workers.reset(seed=0)

    def run(step: Any, as_tensor: bool) -> None:
        for _ in range(steps):
            actions = rng.integers(0, 2, n)
            step(torch.from_numpy(actions) if as_tensor else actions)

    try:
        samples = interleaved_rounds(
            {
                "kldiv": lambda: run(batch.step, True),
                "sync": lambda: run(sync.step, False),
                "async": lambda: run(workers.step, False),
            },
            rounds=3 if args.quick else 9,
        )
    finally:
        workers.close()
        sync.close()
    per_step = {k: [t / steps for t in v] for k, v in samples.items()}
    return {
        "envs": n,
        "seconds_per_step": {k: spread(v) for k, v in per_step.items()},
        "ratio_kldiv_to_sync": round_ratios(per_step, "kldiv", "sync"),
        "ratio_kldiv_to_async": round_ratios(per_step, "kldiv", "async"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=[*_names(), "all"], default="all", help="the algorithm(s) to train")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated random seeds (default 0,1,2)")
    parser.add_argument("--quick", action="store_true", help="one seed, a tenth of the steps; writes rl_quick.json")
    args = parser.parse_args()
    args.seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    name = "rl_quick" if args.quick else "rl"
    path = RESULTS / f"{name}.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results["machine"] = machine()
    results["reference"] = REFERENCE
    for part in _names() if args.part == "all" else [args.part]:
        results[part] = envs_section(args) if part == "envs" else run_algorithm(part, args)
        path = write_json(name, results)
    print(f"wrote {path}")


def _names() -> list[str]:
    return ["envs", "ppo", "trpo", "sac", "sac_discrete"]


if __name__ == "__main__":
    main()
