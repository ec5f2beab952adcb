"""Train a recipe: `python train.py recipe=progressive [data.manifest=...] [trainer.max_epochs=...] [seed=...]`."""

from fusion.commands.train import main

if __name__ == "__main__":
    main()
