"""Training data preparation: `python -m dynamictrl prepare-data --videos DIR --out DIR`.

prepare.py  prepare_dataset: clips, rendered poses, prompts, masks and the manifest
cli.py      the prepare-data subcommand (arguments and run)
"""

from .prepare import PrepareReport, PrepareSettings, prepare_dataset

__all__ = ["PrepareReport", "PrepareSettings", "prepare_dataset"]
