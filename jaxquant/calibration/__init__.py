"""Calibration: range selection for weights and observers for activation statistics."""
