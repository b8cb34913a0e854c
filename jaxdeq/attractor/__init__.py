"""Attractor models: a backbone proposes, a weight-tied refiner solves for the fixed
point, and the solver can be removed at inference."""

from ._blocks import (
    AttentionBlock as AttentionBlock,
    causal_mask as causal_mask,
    GatedRefiner as GatedRefiner,
    TokenBackbone as TokenBackbone,
    TokenDecoder as TokenDecoder,
)
from ._refiner import (
    AttractorRefiner as AttractorRefiner,
    evaluate_budgets as evaluate_budgets,
)
