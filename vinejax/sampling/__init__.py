"""Batched generation with a KV cache and VinePPO Monte-Carlo continuations from cached prefixes."""
from vinejax.sampling.core import (  # noqa: F401
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_NONE,
    FINISH_REASONS,
    FINISH_STOP,
    GenerationOutput,
    Rows,
    SamplingConfig,
    bucket,
    filter_logits,
    sample_tokens,
)
from vinejax.sampling.env import RolloutEnv  # noqa: F401
from vinejax.sampling.generation import assemble_rows, generate, row_keys  # noqa: F401
from vinejax.sampling.mc import (  # noqa: F401
    ContinuationOutput,
    Trajectories,
    TrajectoryCache,
    continue_from_prefixes,
    trajectory_cache,
    unique_prefixes,
)
from vinejax.sampling.stops import (  # noqa: F401
    StopCut,
    StopTable,
    cut_at_stop,
    stop_automaton,
    token_bytes,
    token_sequence_table,
)
