"""rtsflow: retrogressive thaw slumps from time series of elevation models, at pan-Arctic scale."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rtsflow")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
