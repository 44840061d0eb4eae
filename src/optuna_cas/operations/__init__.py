"""Whole-store operations: gc, verify, sync, stats."""
