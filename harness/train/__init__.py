"""Training on synthetic recall data: configs, data sources, the loop, grids and their reports."""
