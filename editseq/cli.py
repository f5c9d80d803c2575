"""absl flags and configs of the entry points (train, build_token_stores, experiment,
bench_train, aot): a mistake in the flags, the config file or a --config.KEY override is one
`error: ...` line on stderr and exit status 2 (data_gen/usage.py), never a traceback."""
from __future__ import annotations

import pathlib
import re
import sys

import ml_collections
from absl import flags

from data_gen import paths
from data_gen import usage
from editseq import default_data

HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")
CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"

# Config keys that hold a path ("" and default_data.SMALL name built-in defaults).
CONFIG_PATH_KEYS = (("data", "data_dir"), ("data", "vocab_path"), ("train", "init_from"),
                    ("model", "from_pretrained"))


def parse_flags(argv: list[str], known_only: bool = False) -> list[str]:
  """absl flag parsing (the `flags_parser` of `app.run`) with mistakes as one line;
  `known_only` passes flags that no module defined on in the returned argv (Beam options).
  `--help` prints `print_help`'s text and exits 0 (absl's own exits 1 and names no config)."""
  if any(a in HELP_FLAGS for a in argv[1:]):
    print_help([a for a in argv if a not in HELP_FLAGS], known_only)
    sys.exit(0)
  try:
    return flags.FLAGS(argv, known_only=known_only)
  except flags.Error as e:
    usage.fail(f"{e} (see --help)")
  except Exception as e:  # pylint: disable=broad-except
    # config_flags raises whatever running get_config() or applying an override raised:
    # AttributeError/KeyError for an unknown key, anything for a broken config file.
    if isinstance(e, (AttributeError, KeyError)):
      text = usage.one_line(e)
      key = re.search(r"'([^'\s]+)'", text)
      hint = re.search(r'Did you mean "([^"]+)"', text)
      usage.fail(f"unknown config key {key.group(1) if key else text!r}"
                 + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))
    usage.fail(f"cannot load --config: {type(e).__name__}: {usage.one_line(e)}")


def load_config(config_flag: flags.FlagHolder):
  """The value of a `config_flags.DEFINE_config_file` flag (None when not given); a config file
  that is missing or fails to import is a usage error."""
  config = config_flag.value
  try:
    # config_flags defers a loading error to the first attribute access of the config.
    if config is not None:
      config.keys()
    return config
  except Exception as e:  # pylint: disable=broad-except
    cause = e.__cause__ or e
    usage.fail(f"cannot load --config={flags.FLAGS[config_flag.name].config_filename}: "
               f"{type(cause).__name__}: {usage.one_line(cause)}")


def absolute_config_paths(config: ml_collections.ConfigDict) -> None:
  """Makes the config's path-valued keys (CONFIG_PATH_KEYS) absolute (data_gen/paths.py), in
  place; the built-in defaults ("" and "default:small") stay as they are."""
  for section, key in CONFIG_PATH_KEYS:
    if section in config and key in config[section]:
      value = config[section][key]
      if isinstance(value, str) and value != default_data.SMALL:
        config[section][key] = paths.absolute(value)


def print_help(argv: list[str], known_only: bool = False) -> None:
  """The command's docstring and flags; with a --config flag, the config files and every key
  of the one given (configs/base.py's when none is), with its value, for --config.KEY=VALUE."""
  main = sys.modules["__main__"]
  print((main.__doc__ or "").strip() + "\n")
  print("flags:\n" + flags.FLAGS.module_help(main))
  if "config" not in flags.FLAGS:
    return
  names = sorted(p.stem for p in CONFIGS_DIR.glob("*.py") if p.stem not in ("__init__", "base"))
  print(f"\nconfigs (--config=configs/NAME.py): {', '.join(names)}")
  parse_flags(argv, known_only)
  config = load_config(flags.FlagHolder(flags.FLAGS, flags.FLAGS["config"]))
  source = flags.FLAGS["config"].config_filename if config is not None else "configs/base.py"
  if config is None:
    from editseq import config_sections  # pylint: disable=g-import-not-at-top
    config = config_sections.default_config()
  print(f"\nkeys of {source} (override any with --config.KEY=VALUE):")
  for key, value in _flatten(config.to_dict()):
    print(f"  {key} = {value!r}")


def _flatten(tree: dict, prefix: str = ""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value

