"""The built-in demo project: a tiny reasoning dataset and a demo base model built locally.

``edgetune build --target phone`` with no config uses this: a few hundred short
GSM8K-style questions (``data/questions.jsonl``, regenerated deterministically by
``python -m edgetune.demo.questions``) and a tiny model trained on them.
"""

from pathlib import Path

from edgetune import resources

DEMO_DIR = Path(__file__).parent
DEMO_DATA = resources.demo_data()
DEMO_NAME = "edgetune-demo"
SYSTEM_PROMPT = (
    "You are a careful assistant that solves short math and reasoning questions. "
    "Think step by step, and put only the final answer in the answer block. "
    "Respond in exactly this format:\n"
    "<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
)
