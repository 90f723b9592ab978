"""Test and development support: the tiny random-weight model (not part of the production engine)."""
