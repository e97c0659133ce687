"""Evaluation metrics, one small module each."""
