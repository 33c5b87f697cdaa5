"""Rendering: the resolved cluster -> the build directory (pure, deterministic)."""
