"""The checkpoint package's one exception type."""


class CheckpointError(ValueError):
    """A checkpoint cannot be found, resolved, or does not hold the tensors a service needs.

    A ValueError so callers that validate user input (CLI flags, a `--model` id) can catch the
    whole family in one place.
    """
