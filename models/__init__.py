"""Sana stage library: pure PyTorch, no Ray. See DESIGN.md for the contracts."""
