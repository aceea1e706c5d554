"""One LightningModule per architecture, grouped by family, each family sharing a base."""
