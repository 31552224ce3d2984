"""Implementations of the nn dialect in numpy, one module per family; importing registers them."""
