"""Diagnostics of trained runs (the paper's §9 value-prediction analysis).

  stats             pure numpy statistics: MAE / MSE / Pearson, pairwise ranking accuracy (ties
                    count wrong), top-1 accuracy, percentile bootstrap confidence intervals
  setup             the policy, its run config and a PPO run's checkpointed critic
  candidates        candidate next steps of a state, cut from sampled continuations
  value_prediction  orchestration: states of fresh episodes, ground-truth values from many
                    rollouts, the PPO critic's and MC estimates, ranking of candidate steps
  plots             the report's figures

`stats` imports nothing else of vinejax; the other modules sit above `vinejax.train`.
"""
