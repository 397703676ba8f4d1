"""Search spaces: DARTS cells (``darts``) shared by P-DARTS, TE-NAS, RoBoT and the random baseline."""
