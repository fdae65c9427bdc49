"""Hub model cards and a push-ready Space repository."""
