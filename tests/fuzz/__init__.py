"""Fuzz targets (atheris) and their seed corpora; the corpora are replayed by test_fuzz.py."""
