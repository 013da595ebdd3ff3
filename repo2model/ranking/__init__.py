"""Which files change next: history statistics, baselines, named features, the LightGBM rankers, change types, symbols, and the metrics every predictor is scored with."""
