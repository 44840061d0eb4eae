"""Whole-store operations: gc, verify, sync, stats; reconcile (a study's metadata vs the store)."""
