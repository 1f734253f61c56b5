"""Data audit: likely label issues, duplicates and cross-split leakage, outliers and balance, on cached embeddings."""
