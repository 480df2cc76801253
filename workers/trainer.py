"""Supernet training with the sandwich rule and in-place distillation, one epoch per call.

Each step trains the largest subnet on the labels, then the smallest and a few random subnets
on the largest one's (detached) soft predictions, accumulating gradients into one optimizer
step (Yu et al., "BigNAS"/"Universally slimmable networks"). The controller calls ``run_epoch``
repeatedly, so that it can store every curve point and decide whether to go on.

Randomness is a function of the seed and the position: epoch ``e`` visits the rows in the order
drawn from ``(seed, e)`` and step ``s`` of it samples its subnets from ``(seed, e, s)``. So a
restarted trainer redraws exactly what it drew before, and under data-parallel training (a
``torch.distributed`` group of several processes, see ``workers.ddp``) every process trains
the same subnets on the same global batches: process ``r`` of ``W`` takes rows ``r::W`` of each
global batch, every loss is divided by the global batch's size, the gradients are summed over
the processes, and the batch norms normalise over the global batch
(``search_spaces.elastic.batch_norm``), so that the update is the one a single process makes
on the whole batch. Only process 0 validates and writes the checkpoint.

On a GPU (``device: cuda``) the training data moves to the device once, steps run under bf16
autocast, images are channels-last, and nothing in a step waits for the device (the loss is
summed on the device and read once per epoch); ``compile`` compiles each elastic block with
dynamic sizes. On the CPU a step is plain float32 (or the parameters' dtype).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from search_spaces import Supernet, get_space
from search_spaces.global_batch_norm import data_parallel
from workers.datasets import Splits, load_dataset
from workers.evaluator import accuracy, recalibrate_batchnorm

CHECKPOINT_NAME = "supernet.pt"


def make_optimizer(params, settings: Mapping[str, Any]) -> torch.optim.Optimizer:
    """An optimizer from ``{"name": "adamw"|"adam"|"sgd", "lr": ..., "weight_decay": ...}``."""
    kinds = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    kwargs = {"lr": settings["lr"], "weight_decay": settings.get("weight_decay", 0.0)}
    if settings["name"] == "sgd":
        kwargs["momentum"] = settings.get("momentum", 0.9)
    return kinds[settings["name"]](params, **kwargs)


def sandwich_step(
    forward: Callable[..., torch.Tensor],
    optimizer: torch.optim.Optimizer,
    params,
    x: torch.Tensor,
    y: torch.Tensor,
    configs: list[Mapping[str, int]],
    distill: bool,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    rows: int | None = None,
    reduce_gradients: Callable[[], None] | None = None,
) -> torch.Tensor:
    """One sandwich-rule step: ``configs[0]`` (the largest) learns the labels, the others learn
    its detached soft predictions (or the labels without ``distill``); gradients accumulate
    into one clipped optimizer step.

    Losses are summed over ``x``'s rows and divided by ``rows``, the global batch's size
    (``len(x)`` when one process trains), so that ``reduce_gradients`` (a sum over the
    processes) gives every process the gradient of the whole batch's mean loss. Returns the
    first loss, detached, without reading it (no host-device synchronisation).
    """
    params = list(params)
    rows = rows or len(x)
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        logits = forward(x, configs[0])
        loss = F.cross_entropy(logits, y, reduction="sum") / rows
    loss.backward()
    # soft targets in at least float32, also when the logits come out of bf16 autocast
    teacher = logits.detach().softmax(dim=1, dtype=torch.promote_types(logits.dtype, torch.float32))
    for config in configs[1:]:
        with autocast():
            student = forward(x, config)
            target = teacher if distill else y
            student_loss = F.cross_entropy(student, target, reduction="sum") / rows
        student_loss.backward()
    if reduce_gradients is not None:
        reduce_gradients()
    torch.nn.utils.clip_grad_norm_(params, 5.0)
    optimizer.step()
    return loss.detach()


def fast_forward(supernet: Supernet, compile: bool) -> Callable[..., torch.Tensor]:
    """The supernet's forward, with each elastic block compiled (dynamic sizes) if asked.

    Whole-supernet compilation would specialise on every config (depth changes the graph);
    the blocks take their sizes as plain integers, which ``torch.compile`` treats as symbols.
    """
    if compile:
        for block in supernet.blocks():
            block.compile(dynamic=True)
    return supernet


def stored_curve(checkpoint_dir: str) -> list[dict[str, float]]:
    """The curve values of every epoch the checkpoint in ``checkpoint_dir`` holds (memory-
    mapped: the weights are not read)."""
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)["curve"]


def position() -> tuple[int, int]:
    """This process's rank and the number of processes training together (``(0, 1)`` alone)."""
    return (dist.get_rank(), dist.get_world_size()) if data_parallel() else (0, 1)


class SupernetTrainer:
    """Trains one supernet; state lives in the checkpoint, so a restarted trainer resumes.

    ``training`` is the spec's plain training settings: epochs, batch_size, optimizer
    (name, lr, weight_decay), random_subnets, distillation ("inplace" or "none"), seed, and
    optionally device ("cpu" or "cuda") and compile. ``dataset`` is ``load_dataset``'s
    arguments, or the ``Splits`` themselves (benchmarks). ``device`` overrides the training
    settings' (a data-parallel process trains on the GPU Ray Train gave it).
    """

    def __init__(
        self,
        space: Mapping[str, Any],
        dataset: Mapping[str, Any] | Splits,
        training: Mapping[str, Any],
        checkpoint_dir: str,
        threads: int = 1,
        device: str | None = None,
    ):
        torch.set_num_threads(threads)
        self.training = dict(training)
        self.splits = dataset if isinstance(dataset, Splits) else load_dataset(**dataset)
        self.space = get_space(space["name"], **space["kwargs"])
        self.device = torch.device(device or self.training.get("device", "cpu"))
        self.rank, self.world = position()
        x = self.splits.x_train
        torch.manual_seed(self.training["seed"])
        self.supernet = self.space.build_supernet(float(x.mean()), float(x.std()))
        self.supernet.to(self.device, memory_format=self.memory_format(x.ndim))
        self.step_forward = fast_forward(self.supernet, self.training.get("compile", False))
        self.optimizer = make_optimizer(self.supernet.parameters(), self.training["optimizer"])
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self.training["epochs"]
        )
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None
        self.epoch = 0
        self.curve: list[dict[str, float]] = []  # each finished epoch's values, in order
        self.checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME
        if self.checkpoint.exists():
            self._restore()

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Train epoch ``epoch`` (counted from 1), save a checkpoint, return its curve values.

        An epoch the checkpoint already holds is not trained again: its stored values come
        back. So a call retried after the worker died (Ray restarts the actor, which restores
        the checkpoint) neither repeats an epoch nor loses one that finished unreported. Under
        data-parallel training only process 0 validates and saves; the other processes return
        the training loss alone.
        """
        if epoch <= self.epoch:
            return self.curve[epoch - 1]
        if epoch != self.epoch + 1:
            raise ValueError(f"cannot train epoch {epoch}: the checkpoint holds {self.epoch}")
        order = np.random.default_rng([self.training["seed"], epoch]).permutation(
            len(self.splits.y_train)
        )
        values = {"train_loss": self.train_batches(epoch, order)}
        self.scheduler.step()
        self.epoch += 1
        if self.rank == 0:
            values["val_acc/largest"] = self.validate(self.space.max())
            values["val_acc/smallest"] = self.validate(self.space.min())
        self.curve.append(values)
        if self.rank == 0:
            self._save()
        return values

    def train_batches(self, epoch: int, order: np.ndarray) -> float:
        """One sandwich step per global batch of ``batch_size`` rows of ``order``; the mean
        loss of the largest subnet (read once, at the end). A last batch of fewer rows than
        two (or than processes) is left out."""
        x, y = self._training_data()
        batch = self.training["batch_size"]
        memory_format = self.memory_format(x.ndim)
        self.supernet.train()
        loss_sum, steps = torch.zeros((), dtype=torch.float64, device=self.device), 0
        for step, start in enumerate(range(0, len(order), batch)):
            rows = torch.from_numpy(order[start : start + batch])
            if len(rows) < max(2, self.world):  # batch norm needs two samples
                continue
            mine = rows[self.rank :: self.world].to(self.device)
            rng = np.random.default_rng([self.training["seed"], epoch, step])
            inputs = x[mine].contiguous(memory_format=memory_format)
            loss_sum += self._sandwich_step(inputs, y[mine], len(rows), rng)
            steps += 1
        if self.world > 1:  # each process holds its rows' share of every batch's mean loss
            dist.all_reduce(loss_sum)
        return float(loss_sum) / max(steps, 1)

    def memory_format(self, ndim: int) -> torch.memory_format:
        """Channels-last for images on a GPU (faster convolutions), else the default."""
        if ndim == 4 and self.device.type == "cuda":
            return torch.channels_last
        return torch.contiguous_format

    def _training_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training split as tensors on the training device, in the parameters' dtype
        (float32 unless a test asks for more), moved there once."""
        if self._data is None:
            dtype = next(self.supernet.parameters()).dtype
            x = torch.from_numpy(self.splits.x_train).to(self.device, dtype)
            self._data = (x, torch.from_numpy(self.splits.y_train).to(self.device))
        return self._data

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _sandwich_step(self, x, y, rows: int, rng: np.random.Generator) -> torch.Tensor:
        """``x``, ``y``: this process's share of a global batch of ``rows`` rows."""
        others = [self.space.min()] + [
            self.space.sample(rng) for _ in range(self.training["random_subnets"])
        ]
        return sandwich_step(
            self.step_forward, self.optimizer, self.supernet.parameters(), x, y,
            [self.space.max(), *others], self.training["distillation"] == "inplace",
            self._autocast, rows, self._sum_gradients if self.world > 1 else None,
        )  # fmt: skip

    def _sum_gradients(self) -> None:
        """Sum every gradient over the processes, in one flat all-reduce. Every process trained
        the same subnets, so the same parameters have gradients everywhere."""
        grads = [p.grad for p in self.supernet.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def validate(self, config: Mapping[str, int]) -> float:
        """Validation accuracy of a subnet after batch-norm recalibration at its own
        resolution (the extracted network resizes its input; the supernet is untouched)."""
        net = recalibrate_batchnorm(self.supernet.extract(config), self.splits.x_train)
        return accuracy(net, self.splits.x_val, self.splits.y_val)

    def checkpoint_path(self) -> str:
        return str(self.checkpoint)

    def _save(self) -> None:
        """Write the checkpoint atomically: a crash never leaves a half-written file."""
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.supernet.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "curve": self.curve,
        }
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint)

    def _restore(self) -> None:
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
        self.supernet.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        self.curve = state["curve"]
