"""Defaults shared by every config; each config file's get_config() starts from here.

Every key, its type, default and valid range are in editseq/config_sections.py (the model's in
editseq/model.py's ModelConfig), which the installed package reads without this folder.
"""
import ml_collections

from editseq import config_sections


def get_config() -> ml_collections.ConfigDict:
  """Returns the full default config; model configs override `model` and a few train fields."""
  return config_sections.default_config()
