"""Synthetic KITTI-format drives through procedural towns (``liploc synth``).

``generate_dataset(out_dir, SynthOptions(...))`` builds a town, plans drives through it, renders
camera images and LiDAR scans by ray casting, and writes them in the KITTI odometry layout with a
``synth.json`` manifest (``load_summary``) saying which sequences are for training and which held out.
"""

from liploc.synth.generate import build_town_and_drives, generate_dataset
from liploc.synth.options import SIZE_PRESETS, SynthOptions
from liploc.synth.summary import SequenceSummary, SynthSummary, load_summary

__all__ = [
    "SIZE_PRESETS",
    "SequenceSummary",
    "SynthOptions",
    "SynthSummary",
    "build_town_and_drives",
    "generate_dataset",
    "load_summary",
]
