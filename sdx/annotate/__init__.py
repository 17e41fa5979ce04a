"""Annotation: T3 attributes and T4 from an image and its mask."""
