"""Verify a booted host against its model: a catalog of checks run through a `Host` backend."""
