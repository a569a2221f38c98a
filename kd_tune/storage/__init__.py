"""kd_tune.storage."""
