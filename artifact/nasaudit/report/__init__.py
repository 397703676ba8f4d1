"""From per-condition results to the paper's tables, and from our tables to a verdict against the paper.

``published`` loads the transcribed tables, ``tables`` adds ΔImp. and significance and renders
CSV/Markdown/LaTeX, ``compare`` checks our cells against the published ones within tolerances. The
results page (`nasaudit report`) is ``evidence`` (each table's cells beside the paper's), ``plots``,
``provenance`` (environments, grid status, compute) and ``html`` (the page itself).
"""
