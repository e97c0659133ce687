"""Datasets: sources in their real formats, the prepared on-disk format, and the semi-supervised split."""
