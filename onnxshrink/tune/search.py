"""The optimizer: an optuna study, seeded, two objectives (file size, 1 - worst cosine), the gates
that need no timing as constraints.

optuna's TPE sampler (multi-objective, constraint-aware) proposes each trial's chain and options;
failed, timed-out and invalid trials are told as infeasible points at the worst values, so the
sampler learns to avoid them instead of proposing them again. Trials are asked and told in batches
of ``jobs``, in trial-number order, so the same seed, space, trial budget and ``jobs`` propose the
same trials whatever order the parallel trials finish in.
"""

from __future__ import annotations

import warnings
from typing import Any

from onnxshrink.errors import UsageError
from onnxshrink.plugin.method import PluginSpec
from onnxshrink.tune.space import CHAIN_PARAM, SearchSpace

# The point told for a trial without a measurement: larger than any real one, infeasible.
WORST = (2.0, 1.0)
CONSTRAINTS_KEY = "constraints"


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UsageError("tune needs optuna, which is not installed: pip install 'onnxshrink[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _constraints(frozen: Any) -> list[float]:
    return list(frozen.user_attrs.get(CONSTRAINTS_KEY) or [1.0])


class Search:
    """Asks for trials and is told their results."""

    def __init__(self, space: SearchSpace, seed: int, n_checks: int):
        optuna = self.optuna = import_optuna()
        self.space, self.n_checks = space, max(n_checks, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constraints_func and multivariate are marked experimental
            sampler = optuna.samplers.TPESampler(
                seed=seed, constraints_func=_constraints, n_startup_trials=8, multivariate=True, group=True
            )
        self.study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        self._asked: dict[int, Any] = {}

    def values(self, result: dict[str, Any]) -> tuple[tuple[float, float], list[float]]:
        metrics = result.get("metrics") or {}
        if result["status"] != "ok" or metrics.get("size_ratio") is None:
            return WORST, [1.0] * self.n_checks
        cosine = metrics.get("cosine")
        return (float(metrics["size_ratio"]), 1.0 - float(cosine) if cosine is not None else 1.0), list(
            result.get("constraints") or [0.0]
        )

    def enqueue(self, params: dict[str, Any]) -> None:
        self.study.enqueue_trial(params, skip_if_exists=True)

    def ask(self) -> tuple[int, list[PluginSpec], dict[str, Any]]:
        """(optuna trial number, chain, params)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = self.study.ask()
            chain = self.space.suggest(trial)
        self._asked[trial.number] = trial
        return trial.number, chain, dict(trial.params)

    def tell(self, number: int, result: dict[str, Any]) -> None:
        trial = self._asked.pop(number)
        values, constraints = self.values(result)
        trial.set_user_attr(CONSTRAINTS_KEY, constraints)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.study.tell(trial, list(values))

    def forget(self, number: int) -> None:
        """An asked trial that never ran (Ctrl-C): fail it, so it is not in the front."""
        trial = self._asked.pop(number, None)
        if trial is not None:
            self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)

    def replay(self, params: dict[str, Any], result: dict[str, Any]) -> bool:
        """Add a finished trial from an earlier report (--resume); False when its params do not fit this space."""
        distributions = self.space.distributions()
        label = params.get(CHAIN_PARAM)
        if label not in self.space.chain_labels:
            return False
        used = {CHAIN_PARAM} | self.space.searched_params(label)
        if set(params) != used:
            return False
        dists = {k: distributions[k] for k in params}
        for key, value in params.items():
            try:
                if not dists[key]._contains(dists[key].to_internal_repr(value)):
                    return False
            except (ValueError, TypeError):
                return False
        values, constraints = self.values(result)
        frozen = self.optuna.trial.create_trial(
            params=params,
            distributions=dists,
            values=list(values),
            user_attrs={CONSTRAINTS_KEY: constraints},
            system_attrs={CONSTRAINTS_KEY: constraints},
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.study.add_trial(frozen)
        return True
