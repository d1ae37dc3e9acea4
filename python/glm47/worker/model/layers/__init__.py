"""Building blocks of the model: linear, norm, rope, MLA attention, dense MLP, MoE, embedding."""
