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


def __getattr__(name: str):
    # `AttractorInfo` was the refiner's own report before every layer returned a
    # `jaxdeq.Report`; kept one release so old imports warn instead of failing.
    if name == "AttractorInfo":
        import warnings

        from .._solution import Report

        warnings.warn(
            "jaxdeq.attractor.AttractorInfo is deprecated: AttractorRefiner returns "
            "a jaxdeq.Report (`report.num_steps`, `report.rel_residual`, "
            "`report.result`).",
            DeprecationWarning,
            stacklevel=2,
        )
        return Report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
