"""Datasets: specs registry, raw-layout readers, tiling, synthetic scenes, torch datasets."""
