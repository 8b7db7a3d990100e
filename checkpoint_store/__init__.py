"""checkpoint_store package."""
