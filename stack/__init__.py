"""What runs services together: the `dvd serve` launcher and supervisor, monolithic mode, Ray Serve, local Redis."""
