"""Folding eval-mode batch norms into the convolutions before them, for inference.

A frozen BatchNorm after a convolution is a per-channel scale and shift, so it can be merged into the
convolution's weights and bias: the network computes the same function (up to float rounding) with one
pass over each feature map fewer. On two CPU cores this makes the stabilized-sync generator ~10-25 %
faster. Only neighbours inside an nn.Sequential are folded, where the order of the children is the order
they run in; a BatchNorm that follows an activation, or sits beside a convolution in a module whose
forward orders them otherwise, is left alone.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

FOLDABLE = (nn.Conv2d, nn.ConvTranspose2d)


def fold_batch_norms(module: nn.Module) -> int:
    """Fold, in place, every BatchNorm2d that directly follows a convolution in an nn.Sequential of
    `module` (which must be in eval mode); the BatchNorm becomes nn.Identity. Returns how many."""
    if module.training:
        raise ValueError("fold batch norms of a network in eval mode only (call .eval() first)")
    folded = 0
    for sequence in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for index in range(len(sequence) - 1):
            conv, norm = sequence[index], sequence[index + 1]
            if isinstance(conv, FOLDABLE) and type(norm) is nn.BatchNorm2d:
                transpose = isinstance(conv, nn.ConvTranspose2d)
                sequence[index] = fuse_conv_bn_eval(conv, norm, transpose=transpose)
                sequence[index + 1] = nn.Identity().eval()
                folded += 1
    return folded
