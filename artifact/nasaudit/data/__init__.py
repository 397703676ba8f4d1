"""Datasets, poisoned-dataset files and the device-resident batch stream."""
