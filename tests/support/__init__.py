"""Fakes at the seams, shared by the tests (see fake_engine.py)."""
