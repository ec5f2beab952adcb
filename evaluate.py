"""Evaluate finished runs: `python evaluate.py run=<run folder>`; see recipes/evaluate.yaml for every key."""

from fusion.commands.evaluate import main

if __name__ == "__main__":
    main()
