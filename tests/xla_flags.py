"""XLA flags of the test processes and the child processes tests start.

Tests run tiny programs whose time is mostly XLA's CPU compilation; these flags skip LLVM's
expensive optimisation passes (about half the suite's CPU time) and leave the numerics to the
same HLO. Benchmarks and user runs never see them.
"""
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
