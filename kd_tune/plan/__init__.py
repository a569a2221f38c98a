"""kd_tune.plan."""
