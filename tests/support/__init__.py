"""Helpers shared by the tests: fixtures for the local real stack, a test exporter."""
