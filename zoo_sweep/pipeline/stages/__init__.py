"""The launcher's stages (pipeline/launch.py runs them in order), each on the shared launch context of core.py."""
