"""Post-hoc calibration: the fitters (`fit`) and the `unictr calibrate` job (`job`).

The in-model layer that applies a fitted map is `unictr.modules.calibration`, beside the model's other
building blocks; this package depends on it, never the reverse.
"""
