"""Wrappers around stores: retries (Backoff) and the read-through cache."""
