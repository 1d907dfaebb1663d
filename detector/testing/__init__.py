"""Test helpers that ship with the package (so CI, users and experiments build the same fixtures)."""
