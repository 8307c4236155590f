"""potability: a drinking-water potability classifier kept honest from lab sample to sensor answer."""

__version__ = "0.1.0"
