"""What `farm up` runs and watches: the supervisor, Redis, worker pools, autoscaling, metrics."""
