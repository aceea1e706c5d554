"""Quality metrics: PCA baseline, FID on a domain classifier's features, ..."""
