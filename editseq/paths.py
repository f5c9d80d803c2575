"""Path flags made absolute once, where each command line is read.

orbax refuses relative paths, and a run's `config.json` must name the same folders whatever
the working directory of a later resume or evaluation; so every CLI passes its path-valued
flags (and config keys) through `absolute` before doing anything with them. URLs (`gs://`,
`s3://`, `hf://`, `http(s)://`, ...) and empty values pass unchanged.
"""
from __future__ import annotations

import os
import re

import ml_collections

from editseq import default_data

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

# Config keys that hold a path ("" and default_data.SMALL name built-in defaults).
CONFIG_PATH_KEYS = (("data", "data_dir"), ("data", "vocab_path"), ("train", "init_from"))


def is_url(path: str) -> bool:
  return bool(_URL.match(path))


def absolute(path: str | None) -> str | None:
  """`path` made absolute against the working directory (`~` expanded); URLs, "" and None as
  they are."""
  if not path or is_url(path):
    return path
  return os.path.abspath(os.path.expanduser(path))


def absolute_config_paths(config: ml_collections.ConfigDict) -> None:
  """Makes the config's path-valued keys (CONFIG_PATH_KEYS) absolute, in place; the built-in
  defaults ("" and "default:small") stay as they are."""
  for section, key in CONFIG_PATH_KEYS:
    if section in config and key in config[section]:
      value = config[section][key]
      if isinstance(value, str) and value != default_data.SMALL:
        config[section][key] = absolute(value)
