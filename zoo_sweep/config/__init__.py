"""Sweep specs (TOML) as frozen dataclasses with one validation layer. No torch here: login nodes without it
still parse and check specs."""
