"""Datasets for the retraining loop: the hard-example store (operators' verdicts)."""
