"""Unified versus separate (versus shared, versus LightGBM, versus DIN): does one model for every surface win?

Every arm trains on `DATA/train` under the same config (architecture, epochs, learning rate, seed;
`din` keeps FuxiCTR's own settings) and is scored on `DATA/eval` with the metric functions `unictr eval` uses:

* `unified`: the config as given (shared trunk, one tower per surface);
* `separate`: one model per surface with the same architecture, its config pruned to that surface
  and trained on that surface's rows only. Each takes as many optimizer steps as the unified model
  (its batch is the config's batch scaled by the surface's row share, so a small surface is not left
  with a handful of updates); epochs, LR and schedule are the config's;
* `shared`: the unified model with one tower for every surface (`model.tower.per_surface=false`);
* `lightgbm`: gradient-boosted trees (optional `lightgbm` package) on the same columns, hashed the way
  the model sees them (every categorical id as a LightGBM categorical, surface and view type
  included), the dense columns, and per-request sequence counts (length, events per action type),
  since trees cannot read the sequence lists; one booster per task on the rows where it applies;
* `din`: a faithful single-task DIN per task (FuxiCTR 2.3's DIN and training defaults: embedding 16,
  Dice target attention [64] over the events with the candidate, DNN 256-128, Adam 1e-3, batches of
  1,024 rows), on the same inputs (surface and view type as categorical features), early-stopped on a
  validation day carved from the training window (`din`).

Modules: `arms` (the neural arms), `baselines` (LightGBM), `din` (the DIN arm), `report` (metrics,
bootstrap intervals of the AUC differences, machine facts, markdown and plot) and `run` (`run_experiment`, which writes
`report.json` (contract in issue 3), `report.md` and `auc.png`).
"""
