"""mixtune: multi-task instruction tuning on task collections such as Super-NaturalInstructions."""

__version__ = "0.1.0"
