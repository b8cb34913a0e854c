import optimistix as optx


class RESULTS(optx.RESULTS):  # pyright: ignore
    """Result codes of jaxdeq solves: [`optimistix.RESULTS`][] plus fixed-point
    specific outcomes whose messages say what to try.

    `jaxdeq.fixed_point` translates optimistix's generic codes into these; compare
    with `sol.result == jaxdeq.RESULTS.successful`.
    """

    fixed_point_max_steps_reached = (
        "The fixed-point solve reached `max_steps` before its residual met the "
        "tolerance. Try a larger `max_steps`, an accelerated solver "
        "(jaxdeq.Anderson or jaxdeq.Broyden), a looser `rtol`/`atol`, or push the "
        "cell towards contraction (jaxdeq.jacobian_regulariser, "
        "equinox.nn.SpectralNorm)."
    )
    fixed_point_diverged = (
        "The fixed-point solve diverged: its residual grew without bound. Try "
        "damping (jaxdeq.Anderson(damping=0.5) or jaxdeq.Broyden(line_search=True)), "
        "a smaller learning rate, or a contractive cell (equinox.nn.SpectralNorm, "
        "jaxdeq.jacobian_regulariser)."
    )
    fixed_point_nonfinite = (
        "NaN or Inf appeared in the fixed-point solve. Check the cell for overflow "
        "(e.g. exp of large values), use float32 or float64 instead of bfloat16 for "
        "the state, damp the solver (jaxdeq.Anderson(damping=0.5)) or lower the "
        "learning rate."
    )


def translate(result: optx.RESULTS) -> RESULTS:
    """Promote an optimistix result to jaxdeq's, replacing generic messages."""
    promoted = RESULTS.promote(result)
    for generic, specific in (
        (
            optx.RESULTS.nonlinear_max_steps_reached,
            RESULTS.fixed_point_max_steps_reached,
        ),
        (optx.RESULTS.nonlinear_divergence, RESULTS.fixed_point_diverged),
        (optx.RESULTS.nonfinite, RESULTS.fixed_point_nonfinite),
    ):
        promoted = RESULTS.where(result == generic, specific, promoted)
    return promoted
