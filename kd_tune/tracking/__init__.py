"""kd_tune.tracking."""
