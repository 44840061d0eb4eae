"""The Optuna-named artifact stores."""
