"""Helpers shared by the tests (imported as `tests.helpers.<module>`; conftest.py holds fixtures only)."""
