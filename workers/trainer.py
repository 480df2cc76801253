"""Supernet training with the sandwich rule and in-place distillation, one epoch per call.

Each step trains the largest subnet on the labels, then the smallest and a few random subnets
on the largest one's (detached) soft predictions, accumulating gradients into one optimizer
step (Yu et al., "BigNAS"/"Universally slimmable networks"). The controller calls ``run_epoch``
repeatedly, so that it can store every curve point and decide whether to go on.

On a GPU (``device: cuda``) the training data moves to the device once, steps run under bf16
autocast, images are channels-last, and nothing in a step waits for the device (the loss is
summed on the device and read once per epoch); ``compile`` compiles each elastic block with
dynamic sizes. On the CPU a step is plain float32, as it always was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from search_spaces import Supernet, get_space
from workers.datasets import load_dataset
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
) -> torch.Tensor:
    """One sandwich-rule step: ``configs[0]`` (the largest) learns the labels, the others learn
    its detached soft predictions (or the labels without ``distill``); gradients accumulate
    into one clipped optimizer step. Returns the first loss, detached, without reading it (no
    host-device synchronisation)."""
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        logits = forward(x, configs[0])
        loss = F.cross_entropy(logits, y)
    loss.backward()
    teacher = logits.detach().float().softmax(dim=1)
    for config in configs[1:]:
        with autocast():
            student = forward(x, config)
            student_loss = F.cross_entropy(student, teacher if distill else y)
        student_loss.backward()
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


class SupernetTrainer:
    """Trains one supernet; state lives in the checkpoint, so a restarted trainer resumes.

    ``training`` is the spec's plain training settings: epochs, batch_size, optimizer
    (name, lr, weight_decay), random_subnets, distillation ("inplace" or "none"), seed, and
    optionally device ("cpu" or "cuda") and compile.
    """

    def __init__(
        self,
        space: Mapping[str, Any],
        dataset: Mapping[str, Any],
        training: Mapping[str, Any],
        checkpoint_dir: str,
        threads: int = 1,
    ):
        torch.set_num_threads(threads)
        self.training = dict(training)
        self.splits = load_dataset(**dataset)
        self.space = get_space(space["name"], **space["kwargs"])
        x = self.splits.x_train
        torch.manual_seed(self.training["seed"])
        self.device = torch.device(self.training.get("device", "cpu"))
        self.supernet = self.space.build_supernet(float(x.mean()), float(x.std()))
        self.supernet.to(self.device, memory_format=self.memory_format(x.ndim))
        self.step_forward = fast_forward(self.supernet, self.training.get("compile", False))
        self.optimizer = make_optimizer(self.supernet.parameters(), self.training["optimizer"])
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self.training["epochs"]
        )
        self.rng = np.random.default_rng(self.training["seed"])
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
        the checkpoint) neither repeats an epoch nor loses one that finished unreported.
        """
        if epoch <= self.epoch:
            return self.curve[epoch - 1]
        if epoch != self.epoch + 1:
            raise ValueError(f"cannot train epoch {epoch}: the checkpoint holds {self.epoch}")
        x, y = self._training_data()
        order = torch.from_numpy(self.rng.permutation(len(y))).to(self.device)
        batch = self.training["batch_size"]
        largest, smallest = self.space.max(), self.space.min()
        self.supernet.train()
        loss_sum, steps = torch.zeros((), device=self.device), 0
        memory_format = self.memory_format(x.ndim)
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            if len(rows) < 2:  # batch norm needs two samples
                continue
            inputs = x[rows].contiguous(memory_format=memory_format)
            loss_sum += self._sandwich_step(inputs, y[rows], largest, smallest)
            steps += 1
        self.scheduler.step()
        self.epoch += 1
        self.curve.append(
            {
                "train_loss": float(loss_sum) / max(steps, 1),
                "val_acc/largest": self.validate(largest),
                "val_acc/smallest": self.validate(smallest),
            }
        )
        self._save()
        return self.curve[-1]

    def memory_format(self, ndim: int) -> torch.memory_format:
        """Channels-last for images on a GPU (faster convolutions), else the default."""
        if ndim == 4 and self.device.type == "cuda":
            return torch.channels_last
        return torch.contiguous_format

    def _training_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training split as tensors on the training device (moved there once)."""
        if self._data is None:
            x = torch.from_numpy(self.splits.x_train).to(self.device)
            self._data = (x, torch.from_numpy(self.splits.y_train).to(self.device))
        return self._data

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _sandwich_step(self, x, y, largest, smallest) -> torch.Tensor:
        """One optimizer step; returns the largest subnet's loss as a tensor on the device."""
        others = [smallest] + [
            self.space.sample(self.rng) for _ in range(self.training["random_subnets"])
        ]
        return sandwich_step(
            self.step_forward, self.optimizer, self.supernet.parameters(), x, y,
            [largest, *others], self.training["distillation"] == "inplace", self._autocast,
        )  # fmt: skip

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
            "rng": self.rng.bit_generator.state,
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
        self.rng.bit_generator.state = state["rng"]
