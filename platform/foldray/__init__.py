"""foldray: AlphaFold 3-class structure prediction. The library never imports Ray."""

__version__ = "0.1.0"
