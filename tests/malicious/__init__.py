"""Hostile inputs for the security tests, generated at test time (no binary blobs committed)."""
