"""Converts pretrained models into editseq checkpoints and back.

    python -m editseq.convert gguf-to-editseq MODEL.gguf OUT      # F32/F16/Q8_0/Q4_0/Q4_1, llama
    python -m editseq.convert hf-to-editseq HF_FOLDER OUT         # Llama/OLMo/Gemma 2/Phi-3
    python -m editseq.convert editseq-to-hf CHECKPOINT OUT        # for transformers

OUT of an import is a checkpoint that `train.init_from`, `model.from_pretrained` and `eval.run
--checkpoint` take (its layout: editseq/pretrained.py); its tokenizer gains `<|diff|>` as one
new id and the embedding a row for it (the mean embedding). An export is a Hugging Face folder
that `transformers.AutoModelForCausalLM.from_pretrained(OUT)` loads (fp32 safetensors, the
tokenizer files and the chat template in tokenizer_config.json). Mistakes and unsupported
models are one `error: ...` line and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
from collections.abc import Sequence

from data_gen import quiet_logs
from data_gen import usage


def _parse_args(argv):
  parser = usage.ArgumentParser(prog="python -m editseq.convert",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n", 1)[1])
  commands = parser.add_subparsers(dest="command", required=True)
  for name, source_help in (("gguf-to-editseq", "a .gguf file (llama architecture)"),
                            ("hf-to-editseq", "a Hugging Face model folder (config.json, "
                             "*.safetensors, tokenizer.json)")):
    command = commands.add_parser(name, help=f"import {source_help}")
    command.add_argument("source", help=source_help)
    command.add_argument("output", help="new folder for the editseq checkpoint")
    command.add_argument("--eos_token", help="end-of-text token name (default: the source's "
                         "generation config, then its tokenizer config)")
    command.add_argument("--pad_token", help="padding token name (default: as for eos)")
  command = commands.add_parser("editseq-to-hf", help="export a checkpoint to a Hugging Face folder")
  command.add_argument("source", help="a run's workdir, a step folder or an imported checkpoint")
  command.add_argument("output", help="new folder for the Hugging Face model")
  command.add_argument("--max_shard_mb", type=float, default=2048,
                       help="safetensors files are split past this size")
  args = parser.parse_args(argv)
  if os.path.exists(args.output) and (not os.path.isdir(args.output) or os.listdir(args.output)):
    usage.fail(f"{args.output} exists and is not an empty folder")
  if not os.path.exists(args.source):
    usage.fail(f"{args.source} does not exist")
  if args.command == "gguf-to-editseq" and not args.source.endswith(".gguf"):
    usage.fail(f"{args.source} is not a .gguf file")
  if args.command == "editseq-to-hf" and not args.max_shard_mb > 0:
    usage.fail("--max_shard_mb must be positive")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse_args(argv)
  from data_gen import paths  # pylint: disable=import-outside-toplevel
  from editseq import gguf_import, pretrained, tokenizer  # pylint: disable=import-outside-toplevel
  args.source, args.output = paths.absolute(args.source), paths.absolute(args.output)
  created = not os.path.exists(args.output)
  try:
    if args.command == "editseq-to-hf":
      family = pretrained.export_hf(args.source, args.output,
                                    max_shard_bytes=int(args.max_shard_mb * 2**20))
      print(f"wrote {args.output} ({family}; load with transformers.AutoModelForCausalLM."
            f"from_pretrained({str(pathlib.Path(args.output))!r}))", file=sys.stderr)
      return 0
    cfg = pretrained.import_model(args.source, args.output, eos_token=args.eos_token,
                                  pad_token=args.pad_token)
  except (gguf_import.GGUFError, tokenizer.VocabularyError, FileNotFoundError, KeyError,
          ValueError) as e:
    if created:  # No half-written folder is left behind.
      shutil.rmtree(args.output, ignore_errors=True)
    usage.fail(usage.one_line(e))
  print(f"wrote {args.output}: {cfg.num_layers} layers, d_model {cfg.d_model}, vocabulary "
        f"{cfg.vocab_size} (finetune with --config.model.from_pretrained={args.output})",
        file=sys.stderr)
  return 0


if __name__ == "__main__":
  quiet_logs.install()
  sys.exit(main())
