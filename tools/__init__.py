"""User tools on top of everything: the `dvd` CLI, `dvd bench *`, `dvd plan`, checkpoint making and presets."""
