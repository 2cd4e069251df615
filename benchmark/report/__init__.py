"""`python -m benchmark.report DIR`: the tables and pictures of a sweep, from every cell under DIR.

Reads each `result.json` (and each `failed.json`: a cell that failed, with its error) and writes into DIR:
- `results.csv`: one row per cell: coordinates, status, before/after metrics, DER, seconds per phase;
- `summary.csv`: one row per (dataset, arch, attack, defense): mean and sample std over seeds;
- `results.md`: per (dataset, arch), a pivot with attacks down and defenses across (the no-defense
  baseline first, RNP and ANP next to each other), clean acc / ASR as mean ± std over seeds, the best
  defense of each row in bold; DER and runtime pivots; RNP vs ANP; the failed cells and their errors;
- `plots/*.png`: clean accuracy vs ASR per defense, and the pruning curves of RNP and ANP per attack;
- `report.html`: all of it on one self-contained page, sortable and filterable, with per-cell details.

Run automatically at the end of every multirun (`ReportCallback`, registered in conf/config.yaml).

Layout: `table` (the data model: cells, stats, groups), `markdown` (results.md), `plots` (PNGs),
`html` (report.html), `write` (the files, wandb, the Hydra callback and the command line).
"""
