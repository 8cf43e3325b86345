"""citybrain: smart traffic signal control and leave-first-pay-later parking."""

__version__ = "0.1.0"
