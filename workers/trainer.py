"""Supernet training with the sandwich rule and in-place distillation, one epoch per call.

Each step trains the largest subnet on the labels, then the smallest and a few random subnets
on the largest one's (detached) soft predictions, accumulating gradients into one optimizer
step (Yu et al., "BigNAS"/"Universally slimmable networks"). The controller calls ``run_epoch``
repeatedly, so that it can store every curve point and decide whether to go on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from search_spaces import get_space
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


class SupernetTrainer:
    """Trains one supernet; state lives in the checkpoint, so a restarted trainer resumes.

    ``training`` is the spec's plain training settings: epochs, batch_size, optimizer
    (name, lr, weight_decay), random_subnets, distillation ("inplace" or "none"), seed.
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
        self.supernet = self.space.build_supernet(float(x.mean()), float(x.std()))
        self.optimizer = make_optimizer(self.supernet.parameters(), self.training["optimizer"])
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self.training["epochs"]
        )
        self.rng = np.random.default_rng(self.training["seed"])
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
        x = torch.from_numpy(self.splits.x_train)
        y = torch.from_numpy(self.splits.y_train)
        order = torch.from_numpy(self.rng.permutation(len(y)))
        batch = self.training["batch_size"]
        largest, smallest = self.space.max(), self.space.min()
        self.supernet.train()
        losses = []
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            if len(rows) < 2:  # batch norm needs two samples
                continue
            losses.append(self._sandwich_step(x[rows], y[rows], largest, smallest))
        self.scheduler.step()
        self.epoch += 1
        self.curve.append(
            {
                "train_loss": float(np.mean(losses)),
                "val_acc/largest": self.validate(largest),
                "val_acc/smallest": self.validate(smallest),
            }
        )
        self._save()
        return self.curve[-1]

    def _sandwich_step(self, x, y, largest, smallest) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.supernet(x, largest)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        teacher = logits.detach().softmax(dim=1)
        others = [smallest] + [
            self.space.sample(self.rng) for _ in range(self.training["random_subnets"])
        ]
        for config in others:
            student = self.supernet(x, config)
            if self.training["distillation"] == "inplace":
                student_loss = F.cross_entropy(student, teacher)
            else:
                student_loss = F.cross_entropy(student, y)
            student_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.supernet.parameters(), 5.0)
        self.optimizer.step()
        return loss.item()

    def validate(self, config: Mapping[str, int]) -> float:
        """Validation accuracy of a subnet after batch-norm recalibration (supernet untouched)."""
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
