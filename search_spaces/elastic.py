"""Elastic layers: one set of weights at the largest size, run at any smaller size by slicing.

Each layer takes its active size as an argument of ``forward`` (nothing is stored on the
module between calls) and can copy its active slice into a plain ``torch.nn`` layer with
``copy_to``, which is how subnets are extracted.

Every batch norm of a supernet is an ``ElasticBatchNorm`` (at full width where the width does
not change) or a ``global_batch_norm.GlobalBatchNorm``, so that data-parallel training, which
normalises over the global batch, reaches all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search_spaces.global_batch_norm import batch_norm


def centre_crop(weight: Tensor, kernel_size: int, dims: int = 1) -> Tensor:
    """The middle ``kernel_size`` taps of a conv weight ``(out, in, k_max, ...)`` along each of
    its last ``dims`` (spatial) axes."""
    start = (weight.shape[-1] - kernel_size) // 2
    window = slice(start, start + kernel_size)
    return weight[(..., *([window] * dims))]


def first_channels(x: Tensor, channels: int) -> Tensor:
    """``x`` with every channel (axis 1) after the first ``channels`` set to zero."""
    keep = torch.arange(x.shape[1], device=x.device) < channels
    return x * keep.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))


class ElasticConv(nn.Module):
    """A convolution over ``dims`` spatial axes whose input/output channels and (odd, square)
    kernel size can shrink.

    Smaller kernels use the centre taps of the largest one (as in Once-for-All, without the
    kernel transformation matrices). A depthwise layer has as many groups as active channels.
    """

    dims = 1

    def __init__(
        self,
        max_in: int,
        max_out: int,
        max_kernel: int,
        stride: int = 1,
        depthwise: bool = False,
        bias: bool = False,
    ):
        super().__init__()
        if max_kernel % 2 == 0:
            raise ValueError(f"max_kernel must be odd, got max_kernel={max_kernel}")
        if depthwise and max_in != max_out:
            raise ValueError(f"a depthwise layer needs max_in == max_out, got {max_in}, {max_out}")
        self.stride = stride
        self.depthwise = depthwise
        fan_in = 1 if depthwise else max_in
        self.weight = nn.Parameter(torch.empty(max_out, fan_in, *[max_kernel] * self.dims))
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def active_weight(self, in_channels: int, out_channels: int, kernel_size: int) -> Tensor:
        fan_in = 1 if self.depthwise else in_channels
        return centre_crop(self.weight[:out_channels, :fan_in], kernel_size, self.dims)

    def forward(
        self, x: Tensor, out_channels: int, kernel_size: int, pad_to_max: bool = False
    ) -> Tensor:
        """``pad_to_max``: run the kernel's centre taps zero-padded to the largest kernel (the
        same output, the layer's largest shape)."""
        in_channels = x.shape[1]
        if self.depthwise:
            out_channels = in_channels
        weight = self.active_weight(in_channels, out_channels, kernel_size)
        padding = kernel_size // 2
        if pad_to_max:
            border = (self.weight.shape[-1] - kernel_size) // 2
            weight = F.pad(weight, [border, border] * self.dims)
            padding += border
        bias = None if self.bias is None else self.bias[:out_channels]
        groups = in_channels if self.depthwise else 1
        conv = F.conv1d if self.dims == 1 else F.conv2d
        return conv(x, weight, bias, self.stride, padding, groups=groups)

    def copy_to(self, conv: nn.Conv1d | nn.Conv2d) -> None:
        """Copy the slice that ``conv``'s shape selects into it."""
        kernel_size = conv.kernel_size[0]
        with torch.no_grad():
            conv.weight.copy_(self.active_weight(conv.in_channels, conv.out_channels, kernel_size))
            if self.bias is not None:
                conv.bias.copy_(self.bias[: conv.out_channels])


class ElasticConv1d(ElasticConv):
    """``ElasticConv`` over sequences ``(batch, channels, length)``."""

    dims = 1


class ElasticConv2d(ElasticConv):
    """``ElasticConv`` over images ``(batch, channels, height, width)``; square kernels."""

    dims = 2


class ElasticBatchNorm(nn.Module):
    """Batch norm over the first ``C`` channels of its largest size (any number of spatial axes).

    In training mode the running statistics of the active channels are updated in place; they
    are only a rough guide for subnets, which is why subnets are recalibrated before they are
    evaluated. Under data-parallel training (``batch_norm``) the statistics are those of the
    global batch.
    """

    def __init__(self, max_features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(max_features))
        self.bias = nn.Parameter(torch.zeros(max_features))
        self.register_buffer("running_mean", torch.zeros(max_features))
        self.register_buffer("running_var", torch.ones(max_features))

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        return batch_norm(
            x,
            self.running_mean[:c],
            self.running_var[:c],
            self.weight[:c],
            self.bias[:c],
            self.training,
            self.momentum,
            self.eps,
        )

    def copy_to(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        c = bn.num_features
        with torch.no_grad():
            bn.weight.copy_(self.weight[:c])
            bn.bias.copy_(self.bias[:c])
            bn.running_mean.copy_(self.running_mean[:c])
            bn.running_var.copy_(self.running_var[:c])


class ElasticLinear(nn.Module):
    """A linear layer whose input features (taken from the input's last axis) and output
    features can shrink."""

    def __init__(self, max_in: int, max_out: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_out, max_in))
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x: Tensor, out_features: int | None = None) -> Tensor:
        out = self.weight.shape[0] if out_features is None else out_features
        bias = None if self.bias is None else self.bias[:out]
        return F.linear(x, self.weight[:out, : x.shape[-1]], bias)

    def copy_to(self, linear: nn.Linear) -> None:
        with torch.no_grad():
            linear.weight.copy_(self.weight[: linear.out_features, : linear.in_features])
            if self.bias is not None:
                linear.bias.copy_(self.bias[: linear.out_features])


class ElasticLayerNorm(nn.Module):
    """Layer norm over the first ``C`` features of its largest size: the statistics are those
    of the active features only, as in a static layer norm of width ``C``."""

    def __init__(self, max_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(max_features))
        self.bias = nn.Parameter(torch.zeros(max_features))

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[-1]
        return F.layer_norm(x, (c,), self.weight[:c], self.bias[:c], self.eps)

    def copy_to(self, norm: nn.LayerNorm) -> None:
        c = norm.normalized_shape[0]
        with torch.no_grad():
            norm.weight.copy_(self.weight[:c])
            norm.bias.copy_(self.bias[:c])
