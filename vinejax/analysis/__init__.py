"""Diagnostics of trained runs (the paper's §9 value-prediction analysis).

  stats             pure numpy statistics: MAE / MSE / Pearson, pairwise ranking accuracy (ties
                    count wrong), top-1 accuracy, percentile bootstrap confidence intervals
  value_prediction  orchestration: states of fresh episodes, ground-truth values from many
                    rollouts, the PPO critic's and MC estimates, candidate next steps and their Q

`stats` imports nothing else of vinejax; `value_prediction` sits above `vinejax.train`.
"""
