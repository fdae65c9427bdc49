"""Metrics, scoring a Segmenter on slices, input forms, external scans, choosing among models."""
