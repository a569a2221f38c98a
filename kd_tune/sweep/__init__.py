"""kd_tune.sweep."""
