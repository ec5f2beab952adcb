"""Export a finished run: `python export.py run=<run folder> format=both out=<folder>`; see recipes/export.yaml."""

from fusion.commands.export import main

if __name__ == "__main__":
    main()
