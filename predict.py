"""Predict with a finished run: `python predict.py run=<run folder> data.manifest=new.csv`; see recipes/predict.yaml."""

from fusion.commands.predict import main

if __name__ == "__main__":
    main()
