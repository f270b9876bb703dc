"""Memory planning: will a config fit on some devices, before renting them (`vinejax.tools.plan`).

* `shapes`: the config's model shape without weights (HF config.json or built-in paper shapes).
* `phases`: each jitted program of a run (sampling, scoring, MC, update steps) with abstract,
  sharded arguments, ready to lower and compile ahead of time.
* `analytic`: the same memory as a formula (params, optimizer, gradients, activations, KV cache).
* `search`: compiled per-device bytes (cached) and the largest batch-like setting that fits.
* `targets`: what a plan compiles for: fake CPU devices or a TPU slice (the TPU compiler, ahead of time).
"""
