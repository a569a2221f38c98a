"""kd_tune.teachers."""
