"""Storage backends: keys and bytes (local, memory, S3, GCS)."""
