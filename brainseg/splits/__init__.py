"""Committed split files (package data)."""
