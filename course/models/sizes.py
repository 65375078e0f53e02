"""What every model configuration shares: the width, the heads, the feed-forward size."""
from __future__ import annotations


def complete_sizes(config) -> None:
    """Fill ``config.d_ff`` with ``4 * d_model`` when it is None and check that the heads divide
    ``d_model``; called by each configuration's ``__post_init__``."""
    if config.d_ff is None:
        config.d_ff = 4 * config.d_model
    if config.d_model % config.num_heads:
        raise ValueError(f"d_model={config.d_model} is not divisible by num_heads={config.num_heads}")
