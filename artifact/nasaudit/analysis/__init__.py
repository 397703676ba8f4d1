"""The paper's analyses beyond the search grid: Table 2 (metric sensitivity) and Table 4's defended data."""
