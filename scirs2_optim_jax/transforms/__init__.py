"""Elementary gradient transformations, one family per module."""

from typing import Any

from scirs2_optim_jax.transforms.adaptive import (
    ScaleByAdamState,
    ScaleByRmsState,
    ScaleByRmsWithCountState,
    ScaleByRssState,
    ScaleByRStdDevState,
    ScaleByRStdDevWithCountState,
    ScaleByStddevState,
    ScaleByStddevWithCountState,
    scale_by_adam,
    scale_by_radam,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
)
from scirs2_optim_jax.transforms.adopt import (
    ScaleByAdoptState,
    default_adopt_clip,
    scale_by_adopt,
)
from scirs2_optim_jax.transforms.clipping import (
    adaptive_grad_clip,
    clip,
    clip_by_block_rms,
    clip_by_global_norm,
    clip_by_leaf_norm,
    clip_factor,
    unitwise_norm,
)
from scirs2_optim_jax.transforms.combine import chain
from scirs2_optim_jax.transforms.factored import (
    FactoredMoments,
    FactoredState,
    factored_dims,
    scale_by_factored_rms,
    scale_by_param_block_rms,
)
from scirs2_optim_jax.transforms.grouped import GroupedAdamState
from scirs2_optim_jax.transforms.learning_rate import (
    ScaleByScheduleState,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
)
from scirs2_optim_jax.transforms.momentum import (
    ScaleByLionState,
    TraceState,
    scale_by_lion,
    trace,
)
from scirs2_optim_jax.transforms.muon import (
    MuonDimensionNumbers,
    MuonState,
    orthogonalize_via_newton_schulz,
    scale_by_muon,
    scale_by_shape,
)
from scirs2_optim_jax.transforms.norms import (
    global_norm,
    leaf_norm,
    leaf_sum_of_squares,
    tree_sum_of_squares,
)
from scirs2_optim_jax.transforms.schedule_free import (
    ScheduleFreeState,
    schedule_free,
    schedule_free_eval_params,
)
from scirs2_optim_jax.transforms.trust_ratio import (
    scale_by_lars_trust_ratio,
    scale_by_trust_ratio,
)
from scirs2_optim_jax.transforms.weight_decay import (
    AddDecayedWeightsState,
    add_decayed_weights,
)

__all__ = [
    "AddDecayedWeightsState",
    "FactoredMoments",
    "FactoredState",
    "GroupedAdamState",
    "MuonDimensionNumbers",
    "MuonState",
    "ScaleByAdamState",
    "ScaleByAdoptState",
    "ScaleByLionState",
    "ScaleByRStdDevState",
    "ScaleByRStdDevWithCountState",
    "ScaleByRmsState",
    "ScaleByRmsWithCountState",
    "ScaleByRssState",
    "ScaleByScheduleState",
    "ScaleByStddevState",
    "ScaleByStddevWithCountState",
    "ScheduleFreeState",
    "TraceState",
    "adaptive_grad_clip",
    "add_decayed_weights",
    "chain",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "clip_by_leaf_norm",
    "clip_factor",
    "default_adopt_clip",
    "factored_dims",
    "global_norm",
    "leaf_norm",
    "leaf_sum_of_squares",
    "orthogonalize_via_newton_schulz",
    "scale",
    "scale_by_adam",
    "scale_by_adopt",
    "scale_by_factored_rms",
    "scale_by_lars_trust_ratio",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_muon",
    "scale_by_param_block_rms",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_shape",
    "scale_by_stddev",
    "scale_by_trust_ratio",
    "schedule_free",
    "schedule_free_eval_params",
    "trace",
    "tree_sum_of_squares",
    "unitwise_norm",
]

# Names that moved to the one-pass engine; importable from here with a DeprecationWarning.
_MOVED = ("FactorUpdate", "FusedUpdate", "apply_gradients", "fused_adam_family")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from scirs2_optim_jax.transforms import fused

        return getattr(fused, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
