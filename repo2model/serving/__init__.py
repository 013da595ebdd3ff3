"""Answering: recent history, the typed Prediction, the Predictor, the HTTP service."""
