"""TinyCodeLM-150M finetuned on the baseline data (instruction -> whole program) with the LintSeq
paper's recipe: 10 epochs, so as many optimizer steps as the LintSeq arm's 2 epochs over 5x the
examples (configs/tinycodelm_150m_lintseq.py holds the recipe).
"""
import ml_collections

from configs import tinycodelm_150m
from configs import tinycodelm_150m_lintseq


def get_config() -> ml_collections.ConfigDict:
  return tinycodelm_150m_lintseq.paper_recipe(tinycodelm_150m.get_config(), "baseline")
