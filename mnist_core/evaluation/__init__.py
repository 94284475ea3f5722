"""Scoring a model (accuracy, per class, confusion, mistakes) and the run's plots."""
