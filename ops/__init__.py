"""visionforge's library: data, models, training, export, engines, metrics.

Plain Python + PyTorch; never imports dagster, so the CLI and DVC stages use it directly.
"""
