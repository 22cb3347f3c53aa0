"""Model recipes: formatting, pooling and scoring of each model family, as data."""
