"""Batch norm over the global batch of data-parallel training, for every batch norm of a supernet.

``nn.SyncBatchNorm`` is a module of fixed width; an elastic batch norm normalises a different
number of channels at every call, so it calls ``batch_norm`` here with its active slices. The
fixed-width batch norms a supernet shares with its static networks become ``GlobalBatchNorm``
(``with_global_batch_norms``), which keeps ``nn.BatchNorm``'s state, so extraction still loads
them into the plain layers of a static network.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def data_parallel() -> bool:
    """Whether this process is one of several in an initialised ``torch.distributed`` group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _SumOverProcesses(torch.autograd.Function):
    """An all-reduced sum whose gradient is the all-reduced sum of the gradients: every
    process's loss depends on every process's input through the sum."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def batch_norm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor,
    bias: Tensor,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """``F.batch_norm``, except that in training mode under data-parallel training the batch
    statistics are those of the global batch: every process's per-channel sums and counts,
    then its sums of squared deviations from the global mean, are all-reduced (differentiably,
    so that each process's gradient also flows through the other processes' rows). The result
    equals one process normalising the whole global batch, up to float rounding. On GPUs
    ``_FusedGlobalBatchNorm`` computes the same with fused kernels. Every process must call it
    for the same layers in the same order, which the same sampled subnet on every process
    guarantees.
    """
    if not training or not data_parallel():
        return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    if x.is_cuda:
        return _FusedGlobalBatchNorm.apply(
            x, weight, bias, running_mean, running_var, eps, momentum
        )
    c = x.shape[1]
    axes = [0, *range(2, x.dim())]
    shape = (1, c) + (1,) * (x.dim() - 2)
    wide = x.to(torch.promote_types(x.dtype, torch.float32))  # half precision sums badly
    count = torch.full((1,), x.numel() // c, dtype=wide.dtype, device=x.device)
    totals = _SumOverProcesses.apply(torch.cat([wide.sum(axes), count]))
    n = totals[-1].detach()
    mean = totals[:c] / n
    centred = wide - mean.view(shape)  # two passes, as F.batch_norm: no cancellation
    var = _SumOverProcesses.apply((centred * centred).sum(axes)) / n
    with torch.no_grad():
        running_mean.lerp_(mean.detach().to(running_mean.dtype), momentum)
        running_var.lerp_((var.detach() * n / (n - 1)).to(running_var.dtype), momentum)
    scale = weight * torch.rsqrt(var + eps)
    return (centred * scale.view(shape) + bias.view(shape)).to(x.dtype)


class _FusedGlobalBatchNorm(torch.autograd.Function):
    """``batch_norm``'s training mode on GPUs, with the fused per-channel kernels that
    ``nn.SyncBatchNorm`` also uses (they exist for CUDA only), in the input's precision.

    Per layer: one all-gather of each process's mean, inverse deviation and row count forward,
    one all-reduce of the two gradient sums backward, and no host-device synchronisation (the
    tensor arithmetic on CPUs is several times slower here, and ``nn.SyncBatchNorm``'s function
    waits for the device at every layer to drop processes without rows, which never happen in
    this trainer).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum):
        if not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous()
        c, world = x.shape[1], dist.get_world_size()
        mean, invstd = torch.batch_norm_stats(x, eps)
        count = torch.full((1,), x.numel() // c, dtype=mean.dtype, device=x.device)
        gathered = torch.empty(world * (2 * c + 1), dtype=mean.dtype, device=x.device)
        dist.all_gather_into_tensor(gathered, torch.cat([mean, invstd, count]))
        means, invstds, counts = gathered.view(world, 2 * c + 1).split([c, c, 1], dim=1)
        mean, invstd = torch.batch_norm_gather_stats_with_counts(
            x, means, invstds, running_mean, running_var, momentum, eps, counts.reshape(-1)
        )
        ctx.save_for_backward(x, weight, mean, invstd, counts.reshape(-1).to(torch.int32))
        return torch.batch_norm_elemt(x, weight, bias, mean, invstd, eps)

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, invstd, counts = ctx.saved_tensors
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        grad = grad.contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        sum_dy, sum_dy_xmu, grad_weight, grad_bias = torch.batch_norm_backward_reduce(
            grad, x, mean, invstd, weight, True, weight.requires_grad, True
        )
        sums = torch.cat([sum_dy, sum_dy_xmu])
        dist.all_reduce(sums)
        sum_dy, sum_dy_xmu = sums.split(x.shape[1])
        grad_x = torch.batch_norm_backward_elemt(
            grad, x, mean, invstd, weight, sum_dy, sum_dy_xmu, counts
        )
        return grad_x, grad_weight, grad_bias, None, None, None, None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """``nn.BatchNorm1d``/``2d``/``3d`` (any input rank), normalising over the global batch in
    training mode under data-parallel training (``batch_norm``); its state is theirs."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and data_parallel()):
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        # momentum None: a cumulative average, as nn.BatchNorm keeps it
        momentum = 1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, True, momentum, self.eps
        )


def with_global_batch_norms(module: nn.Module) -> nn.Module:
    """``module``, with every plain ``nn.BatchNorm*d`` in it replaced (in place) by a
    ``GlobalBatchNorm`` holding the same settings and state."""
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            replacement = GlobalBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine,
                child.track_running_stats,
            )  # fmt: skip
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            with_global_batch_norms(child)
    return module
