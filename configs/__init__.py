"""The shipped settings and scenario specs, read as package data of ``citybrain.configs``."""
