"""Offline (re)training: history in, a validated, versioned model bundle out.

Builds windows with the same engine as the daemon (:mod:`detector.windows`), fits the leak
trend detector's threshold and the drift ensemble, and writes a bundle through
:mod:`detector.models.store`.
"""
