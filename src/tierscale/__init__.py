"""tierscale: one autoscaler for every tier of infrastructure."""

__version__ = "0.1.0"
