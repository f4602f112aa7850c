"""``python -m herald`` is the ``herald`` command (the supervisor starts children this way)."""

from herald.cli import app

app(prog_name="herald")
