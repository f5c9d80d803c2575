"""The LintSeq benchmark; no pipeline module imports it."""
