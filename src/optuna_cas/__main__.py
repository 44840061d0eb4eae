"""``python -m optuna_cas`` runs the CLI."""

from optuna_cas.cli import console_main

raise SystemExit(console_main())
