"""Detectors. Each one implements :class:`detector.models.base.Detector`.

Higher score = more anomalous, everywhere.
"""
