"""Bayesian optimization through Optuna: TPE (single- and multi-objective), Gaussian process, NSGA-II.

All of Optuna's samplers here are driven by `study.ask(fixed_distributions)` / `study.tell`.

The study is the optimizer's state: in a run it lives in `<run dir>/optuna.db` (SQLite), so
`optuna-dashboard sqlite:///runs/NAME/optuna.db` opens it. `state_dict` carries the study's trials as JSON
and `load_state_dict` rebuilds the study from them, so the run's checkpoint stays the one source of truth.
Every ask uses a sampler seeded from (seed, trial number): the same history gives the same next ask, in
this process or after a resume.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from autocomp.optimizers.base import Optimizer, Params, Told
from autocomp.optimizers.guided import GUIDE_SETTINGS, guide_wants_proxies, make_guide
from autocomp.space.params import Choice, IntRange, Param

STUDY = "autocomp"
PRUNERS = ("none", "median", "halving", "hyperband")


def distribution(param: Param) -> BaseDistribution:
    """The Optuna distribution of one parameter (Optuna has no stepped log ranges: those lose `log`)."""
    d = param.domain
    if isinstance(d, Choice):
        return CategoricalDistribution(d.values)
    if isinstance(d, IntRange):
        return IntDistribution(d.low, d.high, log=d.log and d.step == 1, step=1 if d.log else d.step)
    return FloatDistribution(d.low, d.high, log=d.log and not d.step, step=None if d.log else d.step)


def _unscored_state(told: Told) -> TrialState:
    """The Optuna state of a trial without objective values: FAIL if it failed, else PRUNED.

    A trial with violation > 0 was skipped as infeasible, which Optuna's samplers read as a PRUNED trial with
    that constraint violation (TPE ranks it among the infeasible).
    """
    return TrialState.PRUNED if told.violation > 0 else TrialState.FAIL


class OptunaSearch(Optimizer):
    """Optuna sampler behind the ask/tell interface. `initial` candidates (e.g. a greedy result) go first.

    With `guided: true` (`tpe` only; and the guide's settings, see `autocomp.optimizers.guided`) the knapsack
    allocator's measurements and solutions come first and are told to the study; later asks are screened
    by the additive surrogate, and the screened-out trials are told with their predicted values (user
    attribute `predicted`).
    """

    name = "tpe"
    SETTINGS = {"n_startup_trials": int, "multivariate": bool, "population_size": int, "pruner": str,
                "initial": list, **GUIDE_SETTINGS}

    @classmethod
    def wants_proxies(cls, settings: Mapping[str, Any]) -> bool:
        """True when guided with `sensitivity: fisher` (the runner then computes the gradient proxies)."""
        return "guided" in cls.SETTINGS and guide_wants_proxies(settings)

    def __init__(self, space, *, directions, seed=0, context=None, n_startup_trials: int = 10,
                 multivariate: bool = False, population_size: int = 12, pruner: str = "none",
                 initial: list[Params] | None = None, **guide: Any) -> None:
        super().__init__(space, directions=directions, seed=seed, context=context)
        self.guide = make_guide(self, dict(guide))
        if pruner not in PRUNERS:
            raise ValueError(f"pruner must be one of {', '.join(PRUNERS)}, not '{pruner}'")
        self.n_startup_trials = n_startup_trials
        self.multivariate = multivariate
        self.population_size = population_size
        self.pruner_name = pruner
        self.distributions = {p.name: distribution(p) for p in space.params}
        self.queue: list[Params] = [dict(p) for p in (initial or [])]
        for candidate in self.queue:
            if not space.contains(candidate):
                raise ValueError(f"initial candidate is not in the space: {candidate}")
        self.live: dict[int, optuna.Trial] = {}  # asked, not yet told: trial number -> trial
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = self._new_study()

    # -- the study ---------------------------------------------------------------------------------------
    def _storage(self) -> Any:
        if not self.context.workdir:
            return None  # in memory
        url = f"sqlite:///{Path(self.context.workdir).resolve() / 'optuna.db'}"
        try:
            optuna.delete_study(study_name=STUDY, storage=url)  # rebuilt from the checkpoint below
        except KeyError:
            pass
        return url

    def _new_study(self) -> optuna.Study:
        directions = list(self.directions)
        return optuna.create_study(storage=self._storage(), study_name=STUDY, directions=directions,
                                   sampler=self._sampler(0), pruner=self._pruner())

    def _pruner(self) -> optuna.pruners.BasePruner:
        return {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
                "halving": optuna.pruners.SuccessiveHalvingPruner,
                "hyperband": optuna.pruners.HyperbandPruner}[self.pruner_name]()

    def _sampler(self, number: int) -> optuna.samplers.BaseSampler:
        seed = (self.seed * 1_000_003 + number) % 2**32
        # constant_liar: trials still running on other workers count as bad, so parallel asks spread out
        # (with one worker nothing is running at ask time and the samples are unchanged)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials,
                                          multivariate=self.multivariate, constant_liar=True)

    def _next_number(self) -> int:
        return len(self.study.get_trials(deepcopy=False))

    # -- ask / tell ----------------------------------------------------------------------------------------
    def ask(self, n: int) -> list[Params]:
        """Up to `n` candidates: the guide's start first when guided, then the study's, screened."""
        if self.guide is None:
            return self._ask(n)
        return self.guide.ask(n, self._ask, self._reject)

    def tell(self, results: list[Told]) -> None:
        """Tell the guide (when guided), then the study."""
        if self.guide is not None:
            self.guide.tell(results)
        self._tell(results)

    def _reject(self, params: Params, predicted: list[float]) -> None:
        """A candidate the surrogate screened out: told to the study with its predicted values."""
        trial = next((t for t in self.live.values() if self._params(t.params) == params), None)
        if trial is not None:
            trial.set_user_attr("predicted", True)
        self._tell([Told(params, tuple(predicted))])

    def _ask(self, n: int) -> list[Params]:
        """Ask the study `n` trials (queued initial points first), each with a sampler seeded by its number."""
        out = []
        for _ in range(n):
            self.study.sampler = self._sampler(self._next_number())
            if self.queue:
                self.study.enqueue_trial(self.queue.pop(0))
            trial = self.study.ask(self.distributions)
            self.live[trial.number] = trial
            out.append(self._params(trial.params))
        return out

    def _params(self, raw: dict[str, Any]) -> Params:
        # Optuna's stepped floats carry rounding noise (0.35000000000000003): snap to the space's grid
        return {p.name: p.domain.nearest(raw[p.name]) if not isinstance(p.domain, Choice) else raw[p.name]
                for p in self.space.params}

    def _tell(self, results: list[Told]) -> None:
        """Tell the study each result with its violation; one it never asked for is added as a finished trial."""
        for told in results:
            number = next((k for k, t in self.live.items() if self._params(t.params) == told.params), None)
            if number is None:  # a result this study never asked for (e.g. a seed evaluated elsewhere)
                self.study.add_trial(self._frozen(told))
                continue
            trial = self.live.pop(number)
            trial.set_constraint("violation", float(told.violation))  # > 0: infeasible
            if told.values is not None:
                self.study.tell(trial, list(told.values))
            else:
                self.study.tell(trial, state=_unscored_state(told))

    def _frozen(self, told: Told) -> FrozenTrial:
        scored = told.values is not None
        return create_trial(state=TrialState.COMPLETE if scored else _unscored_state(told),
                            values=list(told.values) if scored else None, params=dict(told.params),
                            distributions=self.distributions,
                            constraints=None if _unscored_state(told) == TrialState.FAIL
                            else {"violation": float(told.violation)})

    def report(self, params: Params, step: int, value: float) -> bool:
        """Multi-fidelity hook: an intermediate value of a running trial; True when the pruner stops it.

        Optuna prunes single-objective studies only; with several objectives this never stops a trial.
        """
        if len(self.directions) > 1:
            return False
        trial = next((t for t in self.live.values() if self._params(t.params) == params), None)
        if trial is None:
            return False
        trial.report(value, step)
        return bool(trial.should_prune())

    # -- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The study's trials and the queued initial points, as JSON."""
        trials = []
        for t in self.study.get_trials(deepcopy=False):
            trials.append({"number": t.number, "state": t.state.name, "params": t.params, "values": t.values,
                           "user_attrs": t.user_attrs, "system_attrs": t.system_attrs})
        guide = self.guide.state_dict() if self.guide is not None else None
        return json.loads(json.dumps({"trials": trials, "queue": self.queue, "guide": guide}))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the study from saved trials; trials running at the checkpoint are asked again, same params."""
        self.study = self._new_study()
        self.live = {}
        self.queue = [dict(p) for p in state["queue"]]
        if self.guide is not None and state.get("guide"):
            self.guide.load_state_dict(state["guide"])
        for t in sorted(state["trials"], key=lambda t: t["number"]):
            if t["state"] in ("RUNNING", "WAITING"):  # asked before the checkpoint: ask it again, same params
                self.study.sampler = self._sampler(t["number"])
                self.study.enqueue_trial(t["params"])
                trial = self.study.ask(self.distributions)
                self.live[trial.number] = trial
                continue
            self.study.add_trial(create_trial(
                state=TrialState[t["state"]], values=t["values"], params=t["params"],
                distributions=self.distributions, user_attrs=t["user_attrs"], system_attrs=t["system_attrs"]))


class GPSearch(OptunaSearch):
    """Optuna's Gaussian-process sampler (log EI; constrained and multi-objective variants)."""

    name = "gp"
    SETTINGS = {k: v for k, v in OptunaSearch.SETTINGS.items() if k not in GUIDE_SETTINGS}  # guided: tpe only

    def _sampler(self, number: int) -> optuna.samplers.BaseSampler:
        seed = (self.seed * 1_000_003 + number) % 2**32
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=self.n_startup_trials,
                                         warn_independent_sampling=False)


class OptunaNSGA2(OptunaSearch):
    """Optuna's NSGA-II sampler (generations kept in the trials' system attributes)."""

    name = "optuna-nsga2"
    SETTINGS = {k: v for k, v in OptunaSearch.SETTINGS.items() if k not in GUIDE_SETTINGS}  # guided: tpe only

    def _sampler(self, number: int) -> optuna.samplers.BaseSampler:
        seed = (self.seed * 1_000_003 + number) % 2**32
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=self.population_size)
