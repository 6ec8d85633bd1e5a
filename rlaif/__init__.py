"""rlaif: constitutional self-alignment of language models (RLAIF).

Generate responses, judge pairs under written principles, train with DPO + LoRA, merge, repeat.
See README.md; `rlaif --help` lists the verbs.
"""

__version__ = "0.1.0"
