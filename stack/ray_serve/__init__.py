"""dvd-serve on Ray Serve: the vision and language pools as separate Serve deployments that
autoscale independently, behind the same gateway app (the `ray` extra: `pip install -e '.[ray]'`)."""
