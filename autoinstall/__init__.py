"""Package data (see builder/resources.py); no code."""
