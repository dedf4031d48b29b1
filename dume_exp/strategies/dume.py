"""DUME: closed-form ridge routers from hidden-state statistics, no gradient steps."""
from ..method.ridge import RidgeSolver, fit_routers
from .registry import register
from .base import BuildContext, Candidate, timed


def dume_model(ctx: BuildContext) -> Candidate:
    stats, collect_cost, report = ctx.statistics
    with timed() as cost:
        model = ctx.upcycled()
        solver = RidgeSolver(stats, bias=ctx.router.bias)
        lam = solver.select_lambda() if ctx.router.lam == "auto" else ctx.router.lam  # auto: per-layer GCV
        fit_routers(model, solver, lam=lam, normalize=ctx.router.normalize)
    lam_info = lam.tolist() if ctx.router.lam == "auto" else lam
    return Candidate("dume", model, collect_cost + cost,
                     info={"lam": lam_info, "calibration_tokens": stats.token_counts.tolist(),
                           "statistics": {k: report.get(k, "exact") if k == "mode" else report[k]
                                          for k in ("collected", "loaded", "collect_wall_s", "wall_s", "mode")}})


@register("dume", order=60)
def dume(ctx: BuildContext) -> list[Candidate]:
    return [dume_model(ctx)]
