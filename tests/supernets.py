"""Supernets with random weights and statistics, shared by the search-space and export tests."""

from __future__ import annotations

import torch
from torch import nn

from search_spaces import Supernet
from search_spaces.cnn1d import Cnn1dSpace
from search_spaces.elastic import ElasticBatchNorm

INPUT_LENGTH = 40


def randomised_supernet(space: Cnn1dSpace, seed: int = 0) -> Supernet:
    """A supernet in eval mode whose weights, biases and batch-norm statistics are all random.

    Every batch norm gets a different, non-trivial mean, variance, scale and shift per channel,
    so a subnet that slices the wrong channels (or drops the statistics) computes something
    else. The input normalisation is not the identity either.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        supernet = space.build_supernet(input_mean=0.3, input_std=1.7)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in supernet.modules():
            if isinstance(module, (ElasticBatchNorm, nn.BatchNorm1d)):
                n = module.running_mean.numel()
                module.running_mean.copy_(0.5 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.5 * torch.randn(n, generator=generator))
        supernet.classifier.bias.copy_(torch.randn(space.num_classes, generator=generator))
    return supernet.eval()


def signals(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, INPUT_LENGTH, generator=torch.Generator().manual_seed(seed))
