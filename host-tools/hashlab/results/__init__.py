"""Judging and writing results: verdicts against the oracle, JUnit, tables, HTML."""
