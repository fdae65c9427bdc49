"""Many scans into one resumable results table, on one machine's processes or on Ray."""
