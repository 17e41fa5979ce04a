"""Data: the raw layout, the datasets builder, text levels T0-T4, the synthetic generator."""
