"""``python -m afmc``."""

from .cli import run

run()
