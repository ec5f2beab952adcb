"""Command-line entry points (train, evaluate, manifest builders): thin Hydra apps over the library."""
