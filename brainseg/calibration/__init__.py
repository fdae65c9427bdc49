"""Adapting a model to a new site from a few labelled scans."""
