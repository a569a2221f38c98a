"""kd_tune.train."""
