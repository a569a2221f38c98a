"""Weight initialisation shared by the built-in architectures."""

from __future__ import annotations

from torch import nn


def init_weights(module: nn.Module) -> nn.Module:
    """Initialise ``module`` in place and return it.

    * ``nn.Conv1d/2d``: Kaiming-normal, ``mode="fan_out"``, ``nonlinearity="relu"``
      (the He et al. / WRN convention); bias, if any, zero.
    * ``nn.BatchNorm1d/2d``: weight 1, bias 0.
    * ``nn.Linear``: bias 0; the weight keeps PyTorch's default uniform
      ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` so logits start small.

    All draws come from torch's global RNG, so the result is a deterministic
    function of ``torch.manual_seed``.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module
