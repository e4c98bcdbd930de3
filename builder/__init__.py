"""builder: model, render, validate, build and verify the prometheus host."""

__version__ = "0.1.0"
