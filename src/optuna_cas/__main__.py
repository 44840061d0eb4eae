"""``python -m optuna_cas`` runs the CLI."""

from optuna_cas.cli import main

raise SystemExit(main())
