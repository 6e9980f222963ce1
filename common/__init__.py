"""Helpers every MOPS package may use; it imports none of them."""
