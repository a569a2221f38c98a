"""kd_tune.core."""
