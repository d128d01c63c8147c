"""Compiled twins of the hot loops; each is tested bit for bit against its torch reference."""
