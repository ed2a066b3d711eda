"""HIRL: hierarchical prototypes (hierarchical k-means) and semantic path discrimination over any method."""
