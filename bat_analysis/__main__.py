"""``python -m bat_analysis`` runs the ``bat`` command."""

from .cli import main

main()
