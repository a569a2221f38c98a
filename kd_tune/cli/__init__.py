"""kd_tune.cli."""
