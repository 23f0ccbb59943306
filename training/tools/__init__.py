"""Analysis tools on top of training: FLOPs, parameter counts, attention and boundary figures, the ablation."""
