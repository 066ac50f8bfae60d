"""The floor of a VAE epoch on this machine: its matrix products and its optimizer steps, nothing else.

For the MLP VAE 784-400-400-20 at batch 128 over 60,000 images (468 batches of 128 and one of 96), one epoch
does, per batch, the forward product of every linear layer (``addmm``), and in the backward pass the weight
gradient of every layer (``dY^T X``) and the input gradient of every layer but the first (``dY W``); and one
fused Adam step over the model's parameters. These are timed on preallocated operands, so the figure is what
the arithmetic and the optimizer's memory traffic cost on this machine now, at the better of torch's default thread
count and one thread.
"""

from __future__ import annotations

import time
from typing import Any

import torch

LAYERS = [(784, 400), (400, 400), (400, 20), (400, 20), (20, 400), (400, 400), (400, 784)]  # (in, out)
FIRST = {0}  # layers whose input needs no gradient (the images)


class EpochFloor:
    def __init__(self, *, batch: int, examples: int) -> None:
        torch.manual_seed(0)
        self.threads = torch.get_num_threads()
        full, last = divmod(examples, batch)
        self.batches = [batch] * full + ([last] if last else [])
        self.weights = [torch.randn(n_out, n_in) * 0.05 for n_in, n_out in LAYERS]
        self.biases = [torch.randn(n_out) for _, n_out in LAYERS]
        self.buffers: dict[int, list[dict[str, torch.Tensor]]] = {}
        for b in set(self.batches):
            self.buffers[b] = [
                {
                    "x": torch.randn(b, n_in),
                    "y": torch.empty(b, n_out),
                    "dy": torch.randn(b, n_out),
                    "dx": torch.empty(b, n_in),
                    "dw": torch.empty(n_out, n_in),
                }
                for n_in, n_out in LAYERS
            ]
        flop_per_example = sum(2 * n_in * n_out * (2 if i in FIRST else 3) for i, (n_in, n_out) in enumerate(LAYERS))
        self.gflop = flop_per_example * examples / 1e9
        self.params = [torch.nn.Parameter(t.clone()) for t in (*self.weights, *self.biases)]
        for p in self.params:
            p.grad = torch.randn_like(p) * 1e-3
        self.optimizer = torch.optim.Adam(self.params, lr=1e-3, fused=True)

    def _gemms(self) -> None:
        for b in self.batches:
            for i, (w, bias, buf) in enumerate(zip(self.weights, self.biases, self.buffers[b], strict=True)):
                torch.addmm(bias, buf["x"], w.t(), out=buf["y"])
                torch.mm(buf["dy"].t(), buf["x"], out=buf["dw"])
                if i not in FIRST:
                    torch.mm(buf["dy"], w, out=buf["dx"])

    def _adam(self) -> None:
        for _ in self.batches:
            self.optimizer.step()

    def _timed(self, threads: int) -> tuple[float, float]:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        self._gemms()
        gemm = time.perf_counter() - start
        start = time.perf_counter()
        self._adam()
        return gemm, time.perf_counter() - start

    def measure(self) -> dict[str, Any]:
        """Each part at torch's default thread count and at one thread; the floor takes the faster of each (on a
        busy machine one thread can be many times faster, and a trainer may choose it)."""
        timings = {threads: self._timed(threads) for threads in dict.fromkeys((self.threads, 1))}
        torch.set_num_threads(self.threads)
        gemm = min(t[0] for t in timings.values())
        adam = min(t[1] for t in timings.values())
        return {
            "gemm_seconds": gemm,
            "adam_seconds": adam,
            "gflops": self.gflop / gemm,
            "by_threads": {str(k): {"gemm_seconds": g, "adam_seconds": a} for k, (g, a) in timings.items()},
        }
