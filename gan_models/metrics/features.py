"""What every feature extractor behind a distribution metric (FID, the domain FD and KID) provides."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class FeatureExtractor(Protocol):
    """Maps uint8 NCHW images to (N, dim) float64 features, deterministically."""

    name: str  # what it is, e.g. "inception-v3-pool3" or "domain-classifier"
    extractor_id: str  # identifies the exact weights (a hash): cached statistics are keyed by it
    dim: int

    def features(self, images: np.ndarray, batch_size: int = 200) -> np.ndarray:
        """Features of uint8 images (N, C, H, W), as float64 (N, dim)."""
        ...
