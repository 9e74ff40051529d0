"""Tests of the local real stack itself (``deploy/local``), against the real services."""
