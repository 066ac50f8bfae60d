"""The training loop every kldiv command runs: epochs of steps, checkpoints, exact resume, metrics, progress, NaN stop.

An application owns its model, loss and optimizer step; :class:`TrainingLoop` owns everything that must survive
an interruption. Its shape (the application's code in capitals)::

    loop = TrainingLoop(run, model=MODEL, optimizers={"adam": OPT}, generators={"noise": GEN},
                        epochs=EPOCHS, data_size=N, batch_size=B, seed=SEED)
    for epoch in loop.epochs():
        for index in loop.batches():          # this epoch's batches, from where a resume left off
            LOSS = ...
            loop.check_finite(LOSS)           # the NaN stop
            STEP
            loop.accumulate(len(index), loss=LOSS * len(index))
        loop.end_epoch(eval_accuracy=...)    # a metrics row, metrics.csv, the epoch-end checkpoint

Exact resume: a checkpoint holds the model, each optimizer, each registered generator and stateful object, the
global random generators (Python, NumPy, torch: dropout masks replay), the data order of the current epoch,
the position in it, the running sums of the epoch's metrics and the metrics rows so far. A run resumed from
any checkpoint reproduces the parameters and the metrics of an uninterrupted run bit for bit (same machine and
thread count; the ``seconds`` column excepted). Checkpoints are written at every epoch end and every
``checkpoint_steps`` steps.

Under ``torchrun`` every rank runs the loop over the same global batches (each keeps its shard); the running
sums are all-reduced at each checkpoint and epoch end, so the metrics are those of the global batches.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kldiv.data import batches as batch_indices
from kldiv.runs.checkpoint import rng_state, set_rng_state
from kldiv.runs.errors import OptionError, RunError, TrainingDivergedError
from kldiv.runs.run import Run, option_text

METRICS_FILE = "metrics.csv"
_FLUSH_EVERY = 16  # steps; a value decaying by 0.9 per step stays subnormal for about 150 steps
_POSTFIX_SECONDS = 0.5


class Stateful(Protocol):
    """Anything with ``state_dict()`` / ``load_state_dict()`` in types ``torch.load(weights_only=True)`` restores."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any], /) -> Any: ...


def flush_subnormal_state_(optimizer: torch.optim.Optimizer) -> None:
    """Set the subnormal entries of the optimizer's state to zero, in place.

    Adam's first moment of a parameter whose gradient is exactly zero (weights of MNIST's always-blank border
    pixels, dead ReLUs) decays by beta1 per step into the subnormal range, where x86 arithmetic is many times
    slower: measured here, the optimizer step went from 0.25 to 1.34 s per MNIST epoch after three epochs (205k
    subnormal entries). ``torch.set_flush_denormal`` cannot help reliably, as it only sets the calling thread.
    Zeroing values below the smallest normal float (1.2e-38 in float32) changes nothing that matters.
    """
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, Tensor) and value.is_floating_point() and value.dim():
                value.masked_fill_(value.abs() < torch.finfo(value.dtype).tiny, 0.0)


class ThreadChoice:
    """The thread count of an epoch's steps, chosen by timing its first steps.

    With one candidate, every step runs with it. With several (torch's default and 1), warm-up steps run first
    (the first steps of a process are slow, the more so with more threads), then the candidates take turns, in
    alternating order, two steps each (the first after a switch is not timed), and the following steps run with
    the default unless another count's median was at least 10% faster. If the steps then run several times
    slower than the chosen count's median for a while (another process started), the candidates are timed again.
    On a busy machine an OpenMP barrier waits for a thread that another process has taken off its core, so
    torch's default of one thread per core can make every small operation wait: measured here on 2 cores beside
    one busy process, a VAE step took 600 ms with 2 threads and 13 ms with 1 (and 12 ms against 14 ms when
    quiet).
    """

    WARMUP = 16
    ROUNDS = 4
    MARGIN = 0.9
    SLOWDOWN = 3.0  # steps this many times slower than the chosen median ...
    SLOW_STEPS = 8  # ... this many in a row: time the candidates again

    def __init__(self, candidates: list[int]) -> None:
        self.candidates = candidates
        self.current = candidates[0]
        self.started = 0.0
        self.chosen_median = math.inf
        self.slow = 0
        self._probe(self.WARMUP)

    def _probe(self, warmup: int) -> None:
        self.warmup, self.index, self.plan = warmup, 0, []
        if len(self.candidates) > 1:
            self.plan = [self.current] * warmup
            for r in range(self.ROUNDS):
                order = self.candidates if r % 2 == 0 else self.candidates[::-1]
                self.plan += [c for c in order for _ in range(2)]
        self.times: dict[int, list[float]] = {c: [] for c in self.candidates}
        torch.set_num_threads(self.current)

    def before_step(self) -> None:
        if self.index < len(self.plan):
            self.current = self.plan[self.index]
            torch.set_num_threads(self.current)
        self.started = time.perf_counter()

    def after_step(self) -> None:
        seconds = time.perf_counter() - self.started
        if self.index >= len(self.plan):
            if len(self.candidates) > 1:
                self.slow = self.slow + 1 if seconds > self.SLOWDOWN * self.chosen_median else 0
                if self.slow >= self.SLOW_STEPS:
                    self.slow = 0
                    self._probe(0)
            return
        if self.index >= self.warmup and (self.index - self.warmup) % 2 == 1:  # a switch's first step is untimed
            self.times[self.current].append(seconds)
        self.index += 1
        if self.index == len(self.plan):
            medians = {c: statistics.median(t) for c, t in self.times.items()}
            default = self.candidates[0]
            fastest = min(medians, key=medians.__getitem__)
            self.current = fastest if medians[fastest] < self.MARGIN * medians[default] else default
            self.chosen_median = medians[self.current]
            torch.set_num_threads(self.current)


def csv_bytes(rows: Sequence[Mapping[str, object]]) -> bytes:
    """Rows as CSV (the header from the union of the rows' keys, in order of appearance)."""
    fields: dict[str, None] = {}
    for row in rows:
        fields.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


class TrainingLoop:
    """Epochs of steps over a run (see the module docstring).

    ``model``: every module whose weights make the run (an ``nn.ModuleDict`` for several; unwrapped, not the
    DDP wrapper). ``optimizers``, ``stateful`` (learning-rate schedulers, EMAs, ...) and ``generators`` are saved
    and restored by name. Either ``data_size`` and ``batch_size`` (the loop shuffles ``range(data_size)`` each
    epoch with its own generator seeded by ``seed``, and :meth:`batches` yields index tensors) or
    ``steps_per_epoch`` (:meth:`steps` yields step numbers). ``tensorboard``: also log each row to
    ``RUN/tensorboard`` when TensorBoard is installed.
    """

    def __init__(
        self,
        run: Run,
        *,
        model: nn.Module,
        epochs: int,
        optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
        stateful: Mapping[str, Stateful] | None = None,
        generators: Mapping[str, torch.Generator] | None = None,
        data_size: int | None = None,
        batch_size: int | None = None,
        steps_per_epoch: int | None = None,
        seed: int = 0,
        tensorboard: bool = False,
        flush_subnormal: bool = True,
    ) -> None:
        if (data_size is None) == (steps_per_epoch is None) or (data_size is None) != (batch_size is None):
            raise TypeError("give either data_size and batch_size, or steps_per_epoch")
        if data_size is not None and batch_size is not None:
            if data_size < 1 or batch_size < 1:
                raise ValueError(f"data_size and batch_size must be >= 1, got {data_size} and {batch_size}")
            steps_per_epoch = math.ceil(data_size / batch_size)
        assert steps_per_epoch is not None
        if steps_per_epoch < 1 or epochs < 0:
            raise ValueError(f"steps_per_epoch must be >= 1 and epochs >= 0, got {steps_per_epoch} and {epochs}")
        self.run = run
        self.model = model
        self.total_epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.optimizers = dict(optimizers or {})
        self.stateful = dict(stateful or {})
        self.generators = dict(generators or {})
        self.data_size, self.batch_size = data_size, batch_size
        self.flush_subnormal = flush_subnormal
        self.threads = torch.get_num_threads()  # the thread count of the latest steps
        self._start_threads = self.threads
        self.metrics: list[dict[str, float]] = []
        self.epoch = self.batch = self.step = 0
        self._order_generator = torch.Generator().manual_seed(seed)
        self._epoch_start_state = self._order_generator.get_state()
        self._order: list[Tensor] = []
        self._sums: dict[str, Tensor] = {}
        self._count = 0.0
        self._pending: dict[str, Tensor] = {}
        self._pending_count = 0.0
        self._seconds = 0.0  # of the current epoch, before this process took it up
        self._started = 0.0
        self._postfix: dict[str, object] = {}
        self._postfix_time = 0.0
        self._in_epoch = False
        self._tensorboard: Any = None
        self._use_tensorboard = tensorboard and run.is_main
        self.resumed = run.checkpoint is not None
        if run.checkpoint is not None:
            self._restore()

    # ------------------------------------------------------------------------------------------- iteration

    def epochs(self) -> Iterator[int]:
        """The epochs still to train (0-based), from where a resume left off."""
        while self.epoch < self.total_epochs:
            if self.batch == 0:
                self._epoch_start_state = self._order_generator.get_state()
                self._seconds = 0.0
            else:  # a resume mid-epoch: the same order as before the interruption
                self._order_generator.set_state(self._epoch_start_state)
            if self.data_size is not None and self.batch_size is not None:
                self._order = list(batch_indices(self.data_size, self.batch_size, generator=self._order_generator))
            self._started = time.perf_counter()
            self._in_epoch = True
            epoch = self.epoch
            yield epoch
            if self._in_epoch or self.epoch == epoch:
                raise RuntimeError("each epoch of TrainingLoop.epochs() must end with loop.end_epoch(...)")

    def batches(self) -> Iterator[Tensor]:
        """The index tensors of this epoch's global batches (the loop's shuffle), from the resume position."""
        if self.data_size is None:
            raise TypeError("batches() needs a loop made with data_size and batch_size; use steps()")
        for b in self.steps():
            yield self._order[b]

    def steps(self) -> Iterator[int]:
        """This epoch's step numbers within the epoch, from the resume position; checkpoints every
        ``checkpoint_steps`` steps and shows the progress bar."""
        from tqdm.auto import tqdm

        bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.batch,
            desc=f"epoch {self.epoch + 1}/{self.total_epochs}",
            disable=not (self.run.options.progress and self.run.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        every = self.run.options.checkpoint_steps
        threads = ThreadChoice(self._threads_for_epoch())
        try:
            while self.batch < self.steps_per_epoch:
                threads.before_step()
                yield self.batch
                threads.after_step()
                self.batch += 1
                self.step += 1
                if self.flush_subnormal and self.step % _FLUSH_EVERY == 0:
                    for optimizer in self.optimizers.values():
                        flush_subnormal_state_(optimizer)
                bar.update(1)
                self._show(bar)
                if every and self.step % every == 0 and self.batch < self.steps_per_epoch:
                    self._save()
        finally:
            bar.close()

    def _threads_for_epoch(self) -> list[int]:
        """The thread counts to try at the start of this epoch (the probe of :class:`ThreadChoice`)."""
        chosen = self.run.options.threads
        if chosen is not None:
            return [chosen]
        return [self._start_threads, 1] if self._start_threads > 1 else [1]

    # ---------------------------------------------------------------------------------------------- metrics

    def accumulate(self, count: float = 1, **sums: Tensor | float) -> None:
        """Add one step's sums (``loss=loss * batch``) and its item count; :meth:`end_epoch` reports sum/count.

        Tensors stay on their device (no synchronization per step); they are kept in float64."""
        for name, value in sums.items():
            v = (
                value.detach().to(torch.float64)
                if isinstance(value, Tensor)
                else torch.tensor(float(value), dtype=torch.float64)
            )
            current = self._pending.get(name)
            self._pending[name] = v.clone() if current is None else current + v
        self._pending_count += float(count)

    def show(self, **values: Tensor | float) -> None:
        """Values for the progress bar's postfix (read at most twice a second, so no per-step synchronization)."""
        self._postfix.update(values)

    def check_finite(self, value: Tensor, *, name: str = "loss", hint: str = "") -> None:
        """Stop with :class:`TrainingDivergedError` if ``value`` has a NaN or infinite entry (on any rank).

        The message names the epoch, step and batch, and the checkpoint that is kept (or says there is none)."""
        flat = value.detach().reshape(-1)
        local = torch.isfinite(flat).all()
        finite = local.to(torch.float32)
        if self.run.world_size > 1:  # every rank stops together (one stopping alone would leave the others waiting)
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite):
            shown = "not finite on another rank" if bool(local) else f"{float(flat[~torch.isfinite(flat)][0])}"
            raise TrainingDivergedError(
                f"the {name} is {shown} at epoch {self.epoch + 1}, step {self.step} (batch {self.batch}); training "
                f"stopped: {self.run.describe_checkpoint()}.{' ' + hint if hint else ''}"
            )

    def end_epoch(self, **values: float | int) -> dict[str, float]:
        """Close the epoch: its metrics row (``epoch``, ``step``, each accumulated sum / count, ``values``,
        ``seconds``), appended to :attr:`metrics`, then the checkpoint, then ``metrics.csv`` (and TensorBoard)."""
        if not self._in_epoch:
            raise RuntimeError("end_epoch() outside an epoch of TrainingLoop.epochs()")
        self._sync()
        seconds = self._seconds + time.perf_counter() - self._started
        count = max(self._count, 1.0)
        row: dict[str, float] = {"epoch": self.epoch + 1, "step": self.step}
        row.update({name: float(total) / count for name, total in self._sums.items()})
        row.update({name: float(value) for name, value in values.items()})
        row["seconds"] = seconds
        row["threads"] = torch.get_num_threads()
        self.metrics.append(row)
        self.epoch += 1
        self.batch = 0
        self._sums, self._count, self._seconds = {}, 0.0, 0.0
        self._in_epoch = False
        self._epoch_start_state = self._order_generator.get_state()
        self._save()
        self.run.write_bytes(METRICS_FILE, csv_bytes(self.metrics))
        self._log_tensorboard(row)
        return row

    # ---------------------------------------------------------------------------------------- checkpoints

    def _sync(self) -> None:
        """Fold the pending sums into the epoch's sums (all-reduced over the ranks)."""
        names = list(self._pending)  # insertion order: the same on every rank
        if self.run.world_size > 1:
            packed = torch.stack([*(self._pending[n].cpu() for n in names), torch.tensor(self._pending_count)])
            dist.all_reduce(packed)
            pending = {n: packed[i] for i, n in enumerate(names)}
            count = float(packed[-1])
        else:
            pending, count = {n: self._pending[n].cpu() for n in names}, self._pending_count
        for name, value in pending.items():
            self._sums[name] = self._sums[name] + value if name in self._sums else value.clone()
        self._count += count
        self._pending, self._pending_count = {}, 0.0

    def _state(self) -> dict[str, object]:
        elapsed = self._seconds + (time.perf_counter() - self._started if self._in_epoch else 0.0)
        return {
            "loop": {
                "epoch": self.epoch,
                "batch": self.batch,
                "step": self.step,
                "steps_per_epoch": self.steps_per_epoch,
                "order_generator": self._epoch_start_state.clone(),
                "sums": {name: value.clone() for name, value in self._sums.items()},
                "count": self._count,
                "seconds": elapsed,
            },
            "metrics": [dict(row) for row in self.metrics],
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "stateful": {name: obj.state_dict() for name, obj in self.stateful.items()},
            "generators": {name: g.get_state() for name, g in self.generators.items()},
            "rng": rng_state(),
        }

    def _save(self) -> None:
        self._sync()
        self.run.save(self.model, self._state(), (self.epoch, self.batch, self.step))

    def _restore(self) -> None:
        """Load the checkpoint the run opened: every entry is checked before anything is applied, and nothing is
        recorded in ``run.json`` until all of it is in place."""
        checkpoint = self.run.checkpoint
        assert checkpoint is not None
        state = checkpoint.state
        path = checkpoint.state_path

        def bad(message: str) -> RunError:
            return RunError(f"{path}: malformed checkpoint: {message}")

        for key in ("loop", "metrics", "optimizers", "stateful", "generators", "rng"):
            if key not in state:
                raise bad(f"it has no {key!r} entry")
        loop = state["loop"]
        if not isinstance(loop, dict):
            raise bad(f"'loop' is a {type(loop).__name__}, expected a dict")
        epoch, batch, step, steps = (
            _int_field(loop, key, bad) for key in ("epoch", "batch", "step", "steps_per_epoch")
        )
        if steps != self.steps_per_epoch:
            raise RunError(
                f"{path}: the run had {steps} steps per epoch, this one has {self.steps_per_epoch}: the training data "
                f"or {option_text('batch_size', self.run.options.cli)} changed; resume with the run's own, or start "
                "a new run"
            )
        if batch >= steps:
            raise bad(f"loop.batch is {batch}, but an epoch has {steps} steps")
        if step != epoch * steps + batch:
            raise bad(
                f"loop.step is {step}, but epoch {epoch} and batch {batch} at {steps} steps per epoch "
                f"make {epoch * steps + batch}"
            )
        if epoch > self.total_epochs:
            raise OptionError(
                "epochs", f"the run has completed {epoch} epochs; give at least {epoch} (or start a new run)"
            )
        order = loop.get("order_generator")
        probe = torch.Generator()
        if not (isinstance(order, Tensor) and order.dtype == torch.uint8 and order.shape == probe.get_state().shape):
            raise bad("loop.order_generator is not a generator state (a uint8 tensor)")
        sums, count, seconds = loop.get("sums"), loop.get("count"), loop.get("seconds")
        if not (
            isinstance(sums, dict)
            and all(
                isinstance(k, str) and isinstance(v, Tensor) and v.dim() == 0 and v.dtype == torch.float64
                for k, v in sums.items()
            )
        ):
            raise bad("loop.sums is not a dict of float64 scalars")
        if not _finite_number(count) or not _finite_number(seconds):
            raise bad(f"loop.count ({count!r}) and loop.seconds ({seconds!r}) must be finite numbers >= 0")
        if batch == 0 and (sums or count):
            raise bad("at the start of an epoch (loop.batch 0) there can be no running sums")
        metrics = state["metrics"]
        if not (
            isinstance(metrics, list)
            and len(metrics) == epoch
            and all(
                isinstance(r, dict) and all(isinstance(k, str) and _finite_or_real(v) for k, v in r.items())
                for r in metrics
            )
        ):
            raise bad(f"'metrics' must be a list of {epoch} rows (one per completed epoch) of numbers")
        for key, owned in (
            ("optimizers", self.optimizers),
            ("stateful", self.stateful),
            ("generators", self.generators),
        ):
            saved = state[key]
            if not isinstance(saved, dict) or set(saved) != set(owned):
                names = sorted(map(str, saved)) if isinstance(saved, dict) else type(saved).__name__
                raise bad(f"{key!r} holds {names}, this run has {sorted(owned)}")
        generators, optimizers, stateful = state["generators"], state["optimizers"], state["stateful"]
        assert isinstance(generators, dict)
        assert isinstance(optimizers, dict)
        assert isinstance(stateful, dict)
        for name in self.generators:
            value = generators[name]
            if not (isinstance(value, Tensor) and value.dtype == torch.uint8 and value.shape == order.shape):
                raise bad(f"generators[{name!r}] is not the state of a torch.Generator")
        for name, optimizer in self.optimizers.items():
            problem = _optimizer_state_problem(optimizer, optimizers[name])
            if problem:
                raise bad(f"the state of optimizer {name!r} does not fit it: {problem}")
        try:
            checkpoint.check_fits(self.model)
            probe.set_state(order)
            for name in self.generators:
                probe.set_state(generators[name])
        except (ValueError, RuntimeError) as e:
            raise bad(str(e)) from None
        # everything checked that can be without applying it; now apply, each step guarded
        built = {name: _hyperparameters(opt) for name, opt in self.optimizers.items()}
        try:
            rng = state["rng"]
            if not isinstance(rng, dict):
                raise ValueError("'rng' is not a dict")
            set_rng_state(rng)
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(optimizers[name])
            for name, obj in self.stateful.items():
                obj.load_state_dict(stateful[name])
            for name, generator in self.generators.items():
                generator.set_state(generators[name])
        except Exception as e:
            raise bad(f"{type(e).__name__}: {e}") from None
        if self.run.allowed_changes:  # a deliberate change takes effect: hyper-parameters as the optimizer was built
            for name, optimizer in self.optimizers.items():
                for group, values in zip(optimizer.param_groups, built[name], strict=True):
                    group.update(values)
        checkpoint.load_into(self.model)
        self.epoch, self.batch, self.step = epoch, batch, step
        self._epoch_start_state = order.clone()
        self._order_generator.set_state(order)
        self._sums = {name: value.clone() for name, value in sums.items()}
        assert isinstance(count, (int, float))
        assert isinstance(seconds, (int, float))
        self._count, self._seconds = float(count), float(seconds)
        self.metrics = [dict(row) for row in metrics]
        self.run.saved = (epoch, batch, step)
        self.run.checkpoint = None  # release the file contents
        if self.metrics:  # a process killed between its last checkpoint and metrics.csv left the file behind
            self.run.write_bytes(METRICS_FILE, csv_bytes(self.metrics))
        self.run.record_resume({"epoch": epoch, "batch": batch, "step": step})

    # ------------------------------------------------------------------------------------------------- output

    def _show(self, bar: Any) -> None:
        if bar.disable or not self._postfix:
            return
        now = time.monotonic()
        if now - self._postfix_time < _POSTFIX_SECONDS:
            return
        self._postfix_time = now
        shown = {k: float(v.detach()) if isinstance(v, Tensor) else v for k, v in self._postfix.items()}
        bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in shown.items()}, refresh=False)

    def _log_tensorboard(self, row: Mapping[str, float]) -> None:
        if not self._use_tensorboard:
            return
        if self._tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._use_tensorboard = False
                return
            # purge_step drops events a killed process logged after the checkpoint it is resumed from
            self._tensorboard = SummaryWriter(log_dir=str(self.run.directory / "tensorboard"), purge_step=self.step)
        for key, value in row.items():
            self._tensorboard.add_scalar(key, value, int(row["step"]))
        self._tensorboard.flush()

    def close(self) -> None:
        """Give back the thread count the loop started with; close the TensorBoard writer (if any)."""
        torch.set_num_threads(self._start_threads)
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _finite_or_real(value: object) -> bool:
    """A metrics entry: a real number (NaN and inf are legitimate metric values)."""
    return type(value) in (int, float)


def _hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def _optimizer_state_problem(optimizer: torch.optim.Optimizer, saved: object) -> str:
    """What is wrong with ``saved`` as a state of ``optimizer`` ("" when nothing): the structure, the
    hyper-parameters' types, and the shape of every per-parameter tensor."""
    if not (
        isinstance(saved, dict) and isinstance(saved.get("state"), dict) and isinstance(saved.get("param_groups"), list)
    ):
        return "expected a dict with 'state' (a dict) and 'param_groups' (a list)"
    groups = saved["param_groups"]
    if len(groups) != len(optimizer.param_groups) or not all(isinstance(g, dict) for g in groups):
        return f"{len(groups)} parameter groups, the optimizer has {len(optimizer.param_groups)}"
    params: list[Tensor] = []
    for i, (group, own) in enumerate(zip(groups, optimizer.param_groups, strict=True)):
        ids = group.get("params")
        if not (isinstance(ids, list) and len(ids) == len(own["params"]) and all(type(x) is int for x in ids)):
            return f"parameter group {i} does not list {len(own['params'])} parameter ids"
        for key, value in own.items():
            if key == "params" or key not in group:
                continue
            if not _same_kind(value, group[key]):
                return f"parameter group {i}: {key} is {group[key]!r}, expected a value like {value!r}"
        params.extend(own["params"])
    index: dict[int, Tensor] = {}
    position = 0
    for group in groups:
        for pid in group["params"]:
            index[pid] = params[position]
            position += 1
    for pid, entry in saved["state"].items():
        if pid not in index or not isinstance(entry, dict):
            return f"state of an unknown parameter id {pid!r}"
        param = index[pid]
        for key, value in entry.items():
            if isinstance(value, Tensor) and value.dim() and value.shape != param.shape:
                return f"{key} of parameter {pid} has shape {tuple(value.shape)}, the parameter {tuple(param.shape)}"
    return ""


def _same_kind(built: object, saved: object) -> bool:
    """Whether a saved hyper-parameter has the type of the built one (numbers as numbers, tuples of numbers...)."""
    if isinstance(built, bool) or built is None:
        return type(saved) is type(built)
    if isinstance(built, (int, float)):
        return type(saved) in (int, float)
    if isinstance(built, Tensor):
        return isinstance(saved, (Tensor, int, float)) and not isinstance(saved, bool)
    if isinstance(built, (tuple, list)):
        return (
            isinstance(saved, (tuple, list))
            and len(saved) == len(built)
            and all(_same_kind(b, s) for b, s in zip(built, saved, strict=True))
        )
    return type(saved) is type(built)


def _int_field(mapping: Mapping[str, object], key: str, bad: Any) -> int:
    value = mapping.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad(f"loop.{key} is {value!r}, expected an int >= 0")
    return value
