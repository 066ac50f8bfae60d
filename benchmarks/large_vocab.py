"""Divergence losses over large vocabularies: float32 forward + backward, kldiv against the naive torch path and
the floor of each case, all in the same run.

Cases (T = 2):

(a) logits in, N=4096, V=32000: ``forward_kl(s, t, temperature=2)`` against ``F.kl_div(F.log_softmax(s / T),
    F.log_softmax(t / T), log_target=True, reduction="batchmean")``; also on kldiv's torch path
    (``KLDIV_NATIVE=0``: no C kernel, as on CUDA or without a compiler), the Hinton distillation loss
    (``alpha = 0.5``, against ``F.kl_div`` + ``F.cross_entropy``), a teacher near the student (logits + 0.05
    noise: per-token KL ~3e-4, computed cancellation-free in float64), and both paths on a loaded machine: one
    competing CPU-bound process (``python -c 'while True: pass'``) started by the benchmark for those cases.
    Floor: ``torch.sub(s, t)`` into fresh memory (read both inputs, write a gradient's worth).
(b) fused linear from hidden states (N=4096, H=1024) and head weight (V=32000), against ``hidden @ W.T`` + the
    naive loss. Floor: the three matrix products a fused linear loss cannot avoid (``h @ W.T``, ``G @ W``,
    ``G.T @ h``), whose time also gives the machine's GEMM rate. (c) as (b) at V=128256, N=1024.

Time: the sides (naive, kldiv, floor) back to back in each round of one process, the ratios taken within each
round (robust to the machine's speed drifting between rounds); median and range over the rounds. Memory: peak
RSS above the inputs and their gradients, each side in its own process. Writes
``benchmarks/results/large_vocab.json``, ``large_vocab.md`` (the table) and ``large_vocab.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import RESULTS, machine, write_json

T, REPEATS = 2.0, 3

_SETUP = """
import json, resource, statistics, sys, time
import torch
import torch.nn.functional as F
import kldiv.losses  # imported before the baseline, so library code is not counted as extra
from kldiv.losses import distillation_loss, forward_kl, fused_linear_kl
from kldiv.losses.chunked import kernel
N, V, T, H = {N}, {V}, {T}, {H}
torch.manual_seed(0)
h = torch.randn(N, H, requires_grad=True)
w = (torch.randn(V, H) / H**0.5).requires_grad_()
s = torch.randn(N, V, requires_grad=True)
t = torch.randn(N, V)
labels = torch.randint(0, V, (N,))
t_near = torch.randn(N, V).mul_(0.05).add_(s.detach())  # a teacher close to the student (in place: no temporary)
g_logits = torch.randn(N, V) if H > 1 else None  # a logit gradient for the matmul floor

def naive_linear():
    h.grad = w.grad = None
    F.kl_div(F.log_softmax((h @ w.T) / T, -1), F.log_softmax(t / T, -1), log_target=True,
             reduction="batchmean").backward()

def kldiv_linear():
    h.grad = w.grad = None
    fused_linear_kl(h, w, t, temperature=T).backward()

def floor_linear():  # the three products of a fused linear loss: logits, dh = G W, dW = G^T h
    with torch.no_grad():
        h @ w.T, g_logits @ w, g_logits.T @ h

def naive():
    s.grad = None
    F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="batchmean").backward()

def kldiv():
    s.grad = None
    forward_kl(s, t, temperature=T).backward()

def floor():  # read s and t, write a gradient's worth of fresh memory
    torch.sub(s.detach(), t)

def naive_near():
    s.grad = None
    F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t_near / T, -1), log_target=True, reduction="batchmean").backward()

def kldiv_near():
    s.grad = None
    forward_kl(s, t_near, temperature=T).backward()

floor_near = floor

def naive_distillation():
    s.grad = None
    kl = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="batchmean")
    (0.5 * T**2 * kl + 0.5 * F.cross_entropy(s, labels)).backward()

def kldiv_distillation():
    s.grad = None
    distillation_loss(s, t, labels, alpha=0.5, temperature=T).backward()

floor_distillation = floor

# the gradients of the inputs are part of their footprint, not extra
GRAD_MB = {{"naive": N * V, "kldiv": N * V, "naive_linear": N * H + V * H, "kldiv_linear": N * H + V * H,
            "naive_distillation": N * V, "kldiv_distillation": N * V, "naive_near": N * V, "kldiv_near": N * V}}
"""

_MEMORY = """
step = globals()[sys.argv[1]]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range({R}):
    step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"extra_peak_mb": (peak - base) / 1024 - GRAD_MB[sys.argv[1]] * 4 / 2**20}}))
"""

_TIME = """
sides = [globals()[name] for name in sys.argv[1:]]
for side in sides:  # warm-up
    side()
assert kernel is not None or not {NATIVE}, "the C kernel kldiv._kernels is not built"
rounds = []
for _ in range({ROUNDS}):
    times = []
    for side in sides:
        t0 = time.perf_counter(); side(); times.append(time.perf_counter() - t0)
    rounds.append(times)
print(json.dumps(rounds))
"""

CASES: list[dict[str, Any]] = [
    {"case": "a", "label": "(a) logits, forward KL", "pair": "", "N": 4096, "V": 32000},
    {"case": "a-torch", "label": "(a) on the torch path", "pair": "", "N": 4096, "V": 32000, "native": False},
    {"case": "a-distillation", "label": "(a) distillation loss", "pair": "_distillation", "N": 4096, "V": 32000},
    {"case": "a-near", "label": "(a) teacher near the student", "pair": "_near", "N": 4096, "V": 32000},
    {"case": "a-loaded", "label": "(a) with a competing process", "pair": "", "N": 4096, "V": 32000, "load": True},
    {
        "case": "a-torch-loaded",
        "label": "(a) torch path, competing process",
        "pair": "",
        "N": 4096,
        "V": 32000,
        "native": False,
        "load": True,
    },
    {"case": "b", "label": "(b) fused linear, V=32000", "pair": "_linear", "N": 4096, "V": 32000, "H": 1024},
    {"case": "c", "label": "(c) fused linear, V=128256", "pair": "_linear", "N": 1024, "V": 128_256, "H": 1024},
]


def _child(code: str, *args: str, env: dict[str, str]) -> Any:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, env={**os.environ, **env}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _case(spec: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Memory of naive and kldiv, each in its own process; time of naive, kldiv and the floor in one process,
    back to back in each round (with a competing busy process running for the loaded cases)."""
    pair, n, v, h = spec["pair"], spec["N"], spec["V"], spec.get("H", 1)
    native = spec.get("native", True)
    setup = _SETUP.format(N=n, V=v, T=T, H=h)
    env = {"KLDIV_NATIVE": "1" if native else "0"}
    names = [f"naive{pair}", f"kldiv{pair}", f"floor{pair}"]
    memory = {side: _child(setup + _MEMORY.format(R=REPEATS), f"{side}{pair}", env=env) for side in ("naive", "kldiv")}
    load_before = os.getloadavg()
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if spec.get("load") else None
    try:
        times = _child(setup + _TIME.format(ROUNDS=rounds, NATIVE=native), *names, env=env)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    naive_s, ours_s, floor_s = ([r[i] for r in times] for i in range(3))
    result: dict[str, Any] = {
        **{k: spec[k] for k in ("case", "label", "N", "V")},
        **({"H": h} if pair == "_linear" else {}),
        "c_kernel": native,
        "competing_process": bool(spec.get("load")),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": {"naive": _spread(naive_s), "kldiv": _spread(ours_s), "floor": _spread(floor_s)},
        "kldiv_over_naive": _spread([o / b for b, o in zip(naive_s, ours_s, strict=True)]),
        "naive_over_floor": _spread([b / f for b, f in zip(naive_s, floor_s, strict=True)]),
        "kldiv_over_floor": _spread([o / f for o, f in zip(ours_s, floor_s, strict=True)]),
        "extra_peak_mb": {side: memory[side]["extra_peak_mb"] for side in memory},
        "memory_ratio": memory["kldiv"]["extra_peak_mb"] / memory["naive"]["extra_peak_mb"],
        "rounds_seconds": times,
    }
    if pair == "_linear":  # three products of 2 N V H flops each
        result["gemm_gflops"] = _spread([3 * 2 * n * v * h / f / 1e9 for f in floor_s])
    print(_row(result), flush=True)
    return result


def _range(spread: dict[str, float], digits: int = 2) -> str:
    return f"{spread['median']:.{digits}f} ({spread['min']:.{digits}f}-{spread['max']:.{digits}f})"


def _row(c: dict[str, Any]) -> str:
    sec = c["seconds"]
    mem = c["extra_peak_mb"]
    return (
        f"| {c['label']} | {_range(sec['naive'])} | {_range(sec['kldiv'], 3)} | {_range(c['kldiv_over_naive'])} | "
        f"{_range(sec['floor'], 3)} | {_range(c['naive_over_floor'], 1)} | {_range(c['kldiv_over_floor'], 1)} | "
        f"{mem['naive']:.0f} / {mem['kldiv']:.0f} MB ({100 * c['memory_ratio']:.1f}%) |"
    )


HEADER = (
    "| case | naive s | kldiv s | kldiv / naive | floor s | naive / floor | kldiv / floor | extra peak memory "
    "naive / kldiv |\n|---|---|---|---|---|---|---|---|"
)


def table(payload: dict[str, Any]) -> str:
    """The results as a markdown table with the machine, the load and what the columns mean."""
    m = payload["machine"]
    gemm = [c["gemm_gflops"]["median"] for c in payload["cases"] if "gemm_gflops" in c]
    lines = [
        f"Measured {m['date']} on {m['processor']}, {m['cpu_count']} cores ({m['torch_threads']} torch threads), "
        f"torch {m['torch']}, Python {m['python']}; float32 GEMM rate {', '.join(f'{g:.0f}' for g in gemm)} "
        f"GFLOP/s (cases b, c); load average {payload['load_average_before']} before the run, "
        f"{payload['load_average_after']} after (other processes on the machine count).",
        "",
        HEADER,
        *(_row(c) for c in payload["cases"]),
        "",
        "Seconds: forward + backward, median (range) over the rounds; the ratios are taken within each round. "
        "Floor: (a) `torch.sub(s, t)` into fresh memory (read both inputs, write a gradient's worth); (b), (c) the "
        "three matrix products of a fused linear loss. Memory: peak RSS above the inputs and their gradients, "
        "each side in its own process. 'competing process': one `python -c 'while True: pass'` ran during the "
        "timing.",
    ]
    return "\n".join(lines) + "\n"


def plot(payload: dict[str, Any]) -> Path:
    """``benchmarks/results/large_vocab.png``: time and extra peak memory of each case, naive against kldiv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = payload["cases"]
    y = np.arange(len(cases))
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for offset, side, color in ((-0.27, "naive", "#999999"), (0.0, "kldiv", "#1f77b4"), (0.27, "floor", "#2ca02c")):
        values = [c["seconds"][side]["median"] for c in cases]
        ax_t.barh(y + offset, values, height=0.26, color=color, label=side)
        for yi, value in zip(y + offset, values, strict=True):
            ax_t.text(value, yi, f" {value:.2f}", va="center", fontsize=7)
    for offset, side, color in ((-0.2, "naive", "#999999"), (0.2, "kldiv", "#1f77b4")):
        values = [c["extra_peak_mb"][side] for c in cases]
        ax_m.barh(y + offset, values, height=0.38, color=color)
        for yi, value in zip(y + offset, values, strict=True):
            ax_m.text(value, yi, f" {value:.0f}", va="center", fontsize=7)
    ax_t.set_xlabel("forward + backward, seconds (median of rounds)")
    ax_m.set_xlabel("extra peak memory, MB (log scale)")
    ax_m.set_xscale("log")
    for ax in (ax_t, ax_m):
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.15)
    ax_t.set_yticks(y, [c["label"] for c in cases])
    ax_t.invert_yaxis()
    fig.legend(*ax_t.get_legend_handles_labels(), loc="upper right", ncols=3, frameon=False)
    fig.suptitle("kldiv against the naive torch path and the floor, float32 on CPU", fontsize=10, x=0.4)
    fig.tight_layout()
    path = RESULTS / "large_vocab.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.large_vocab",
        description="Time and memory of kldiv's large-vocabulary losses against the naive torch path and each "
        "case's floor (float32 forward + backward). Writes benchmarks/results/large_vocab.json, .md and .png.",
    )
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds per case (default 7)")
    parser.add_argument(
        "--cases", default=",".join(c["case"] for c in CASES), help="comma-separated cases (default: all)"
    )
    parser.add_argument("--plot", action="store_true", help="only redraw the figure and table from the stored JSON")
    args = parser.parse_args()
    if args.plot:
        payload = json.loads((RESULTS / "large_vocab.json").read_text())
        (RESULTS / "large_vocab.md").write_text(table(payload))
        print(plot(payload))
        return
    chosen = {name.strip() for name in args.cases.split(",")}
    unknown = chosen - {c["case"] for c in CASES}
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; choose from {[c['case'] for c in CASES]}")
    load_before = [round(x, 2) for x in os.getloadavg()]
    print(HEADER, flush=True)
    started = time.time()
    cases = [_case(spec, args.rounds) for spec in CASES if spec["case"] in chosen]
    payload = {
        "benchmark": "large-vocabulary losses, float32 forward + backward: kldiv, the naive torch path, the floor",
        "method": "time: naive, kldiv and the floor back to back in each round of one process, ratios within "
        "rounds, median (range) over rounds; memory: peak RSS above the inputs and their gradients, each side in "
        "its own process",
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "minutes": round((time.time() - started) / 60, 1),
        "cases": cases,
    }
    write_json("large_vocab", payload)
    (RESULTS / "large_vocab.md").write_text(table(payload))
    plot(payload)


if __name__ == "__main__":
    main()
