"""`make bench`: speed against plain-PyTorch baselines measured in the same run (not tests)."""
