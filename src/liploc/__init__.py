"""liploc: global visual localization in LiDAR maps (LIP-Loc and beyond)."""

__version__ = "0.1.0"
