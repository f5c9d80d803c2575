"""Apache Beam without its BigQuery-client notice.

Importing Beam's I/O modules logs "apitools not found, and bigquery client libraries are not
available ..." at WARNING on the root logger wherever Beam's GCP extra is not installed: on every
`data_gen` and `build_token_stores` run that does not target Dataflow, `--help` included. It
says nothing about those runs, and a Dataflow run without the extra is already a one-line error
(`data_gen.pipeline.make_pipeline`). `install()` (called by the `editseq` and `data_gen`
packages) adds a filter to the root logger that drops that one record; every other passes.
"""
from __future__ import annotations

import logging

_NOTICE = "apitools not found, and bigquery client libraries are not available"


class _DropNotice(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.name == "root" and str(record.msg).startswith(_NOTICE))


def install() -> None:
  root = logging.getLogger()
  if not any(isinstance(f, _DropNotice) for f in root.filters):
    root.addFilter(_DropNotice())
