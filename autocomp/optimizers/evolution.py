"""Evolutionary search with DEAP: NSGA-II for several objectives, a GA for one.

Generational ask/tell: a generation is asked, told, then bred into the next. Everything lives on the
instance (a per-instance Fitness class, no `deap.creator` globals), and DEAP's operators draw from
Python's global `random`, so each call runs inside this optimizer's own saved random state.

Genes keep their kind: a continuous float is a float (simulated binary crossover, polynomial mutation);
a stepped float or an integer is its grid index (the same operators, rounded); a choice is its index
(uniform crossover, random reset). Infeasible candidates lose to feasible ones by constrained domination
(Deb): less violation first, Pareto dominance among equals. A failed candidate has infinite violation.
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from deap import base, tools

from autocomp.optimizers.base import Optimizer, Params, Told
from autocomp.optimizers.guided import GUIDE_SETTINGS, guide_wants_proxies, make_guide
from autocomp.space.params import Choice, FloatRange, IntRange, Param


class ConstrainedFitness(base.Fitness):
    """DEAP fitness with a constraint violation: lower violation wins before any objective counts."""

    violation: float = 0.0
    scored: bool = True  # False: failed or infeasible, its values are placeholders (the worst seen)

    def dominates(self, other: ConstrainedFitness, obj: slice = slice(None)) -> bool:
        """Lower violation dominates; at equal violation, DEAP's Pareto dominance on the objectives."""
        if self.violation != other.violation:
            return self.violation < other.violation
        return super().dominates(other, obj)

    def _key(self) -> tuple[float, tuple[float, ...]]:
        return (-self.violation, self.wvalues)

    def __lt__(self, other: ConstrainedFitness) -> bool:  # what selTournament / selBest compare
        return self._key() < other._key()

    def __le__(self, other: ConstrainedFitness) -> bool:
        return self._key() <= other._key()

    def __gt__(self, other: ConstrainedFitness) -> bool:
        return not self.__le__(other)

    def __ge__(self, other: ConstrainedFitness) -> bool:
        return not self.__lt__(other)


class Individual(list):
    """A DEAP individual: one gene per parameter, with its fitness."""

    fitness: ConstrainedFitness


class _Gene:
    """How one parameter is encoded: kind float (value), index (grid position) or choice (position)."""

    def __init__(self, param: Param) -> None:
        d = param.domain
        self.param = param
        if isinstance(d, Choice):
            self.kind, self.count = "choice", len(d.values)
        elif isinstance(d, FloatRange) and not d.step:
            self.kind, self.low, self.high = "float", float(d.low), float(d.high)
        else:
            assert isinstance(d, (IntRange, FloatRange))
            step = d.step
            self.kind = "index"
            self.count = int(math.floor((d.high - d.low) / step + 1e-9)) + 1
            self.origin, self.step = d.low, step

    def encode(self, value: Any) -> float | int:
        if self.kind == "choice":
            return self.param.domain.values.index(value)
        if self.kind == "float":
            return float(value)
        return int(round((value - self.origin) / self.step))

    def decode(self, gene: float | int) -> Any:
        if self.kind == "choice":
            return self.param.domain.values[int(gene)]
        if self.kind == "float":
            return self.param.domain.nearest(gene)
        return self.param.domain.nearest(self.origin + int(round(gene)) * self.step)

    def bounds(self) -> tuple[float, float]:
        return (self.low, self.high) if self.kind == "float" else (0.0, float(self.count - 1))


class EvolutionSearch(Optimizer):
    """NSGA-II (several objectives) or a GA with elitism (one objective), through DEAP.

    With `guided: true` (see `autocomp.optimizers.guided`) the knapsack allocator's measurements and
    solutions are the first generation's pool the next one is bred from (instead of random individuals),
    and children are screened by the additive surrogate: a screened-out child gets its predicted fitness.
    """

    name = "nsga2"
    SETTINGS = {"population": int, "crossover": float, "mutation": float, "eta": float, "seed_uniform": int,
                "initial": list, **GUIDE_SETTINGS}

    @classmethod
    def wants_proxies(cls, settings: Mapping[str, Any]) -> bool:
        """True when guided with `sensitivity: fisher` (the runner then computes the gradient proxies)."""
        return "guided" in cls.SETTINGS and guide_wants_proxies(settings)

    def __init__(self, space, *, directions, seed=0, context=None, population: int = 12,
                 crossover: float = 0.9, mutation: float = 1.0, eta: float = 15.0, seed_uniform: int = 0,
                 initial: list[Params] | None = None, **guide: Any) -> None:
        super().__init__(space, directions=directions, seed=seed, context=context)
        self.guide = make_guide(self, dict(guide))
        if population < 4:
            raise ValueError("population must be at least 4")
        self.population_size = population + (-population % 4)  # NSGA-II's tournament pairs need 4k
        self.cxpb, self.mutation, self.eta = crossover, mutation, eta
        self.genes = [_Gene(p) for p in space.params]
        weights = tuple(1.0 if d == "maximize" else -1.0 for d in self.directions)
        self.fitness_class = type("Fitness", (ConstrainedFitness,), {"weights": weights})
        self.random_state = random.Random(seed).getstate()
        self.generation = 0
        self.parents: list[Individual] = []
        self.queue: list[Individual] = []  # this generation, not yet asked
        self.asked: list[Individual] = []  # asked, not yet told
        self.evaluated: list[Individual] = []  # this generation, told
        seeds = [dict(p) for p in (initial or [])] + self._uniform_points(seed_uniform)
        for candidate in seeds:
            if not space.contains(candidate):
                raise ValueError(f"initial candidate is not in the space: {candidate}")
        with self._random():
            self.queue = [self._individual(c) for c in seeds[: self.population_size]]
            while len(self.queue) < self.population_size:
                self.queue.append(self._random_individual())

    # -- encoding ----------------------------------------------------------------------------------------
    def _individual(self, params: Params) -> Individual:
        ind = Individual(g.encode(params[g.param.name]) for g in self.genes)
        ind.fitness = self.fitness_class()
        return ind

    def _random_individual(self) -> Individual:
        genes = [random.uniform(g.low, g.high) if g.kind == "float" else random.randrange(g.count)
                 for g in self.genes]
        ind = Individual(genes)
        ind.fitness = self.fitness_class()
        return ind

    def _params(self, ind: Individual) -> Params:
        return {g.param.name: g.decode(v) for g, v in zip(self.genes, ind)}

    def _uniform_points(self, count: int) -> list[Params]:
        """`count` uniform policies (one setting per knob everywhere), evenly along each knob's order."""
        out = []
        for i in range(count):
            u = i / max(count - 1, 1)
            out.append({p.name: self._at(p, u) for p in self.space.params})
        return out

    @staticmethod
    def _at(param: Param, u: float) -> Any:
        values = param.ordered()
        return values[min(int(round(u * (len(values) - 1))), len(values) - 1)]

    @contextmanager
    def _random(self) -> Iterator[random.Random]:
        """Run DEAP (which uses the global `random`) on this optimizer's own random state."""
        outside = random.getstate()
        random.setstate(self.random_state)
        try:
            yield random  # type: ignore[misc]
        finally:
            self.random_state = random.getstate()
            random.setstate(outside)

    # -- ask / tell ------------------------------------------------------------------------------------------
    def ask(self, n: int) -> list[Params]:
        """Up to `n` candidates: the guide's start first when guided, then this generation's, screened."""
        if self.guide is None:
            return self._ask(n)
        guide = self.guide
        return guide.ask(n, self._ask, self._reject, on_started=lambda: self._start_from(guide.start_points()))

    def tell(self, results: list[Told]) -> None:
        """Tell the guide (when guided), then set the fitness of asked individuals.

        Guided, a result this population never asked for (a neighbour of the front the guide picked over
        its children) joins the pool the next generation is selected from, as the guided start's points do.
        """
        if self.guide is not None:
            self.guide.tell(results)
            if self.guide.phase == "search":  # the start's results become the pool at once (`_start_from`)
                asked = [self._params(ind) for ind in self.asked]
                self._adopt([t for t in results if t.params not in asked and self.space.contains(t.params)])
        self._tell(results)

    def _adopt(self, results: list[Told]) -> None:
        """Results asked elsewhere as individuals of this generation.

        One the population holds already (a child screened out with its predicted fitness, then picked as
        a neighbour and measured) gets the measured fitness instead of a second copy.
        """
        for told in results:
            held = next((ind for ind in self.evaluated + self.parents if self._params(ind) == told.params), None)
            if held is not None:
                self._score(held, told)
                continue
            ind = self._individual(told.params)
            self._score(ind, told)
            self.evaluated.append(ind)

    def _start_from(self, points: list[tuple[Params, list[float] | None]]) -> None:
        """The guided start: the measured points are the pool the next generation is bred from."""
        self.queue, self.asked, self.evaluated = [], [], []
        failed = []
        for params, values in points:
            if not self.space.contains(params):
                continue
            ind = self._individual(params)
            if values is None:  # failed: it loses to every scored one, as a told failure does
                ind.fitness.violation, ind.fitness.scored = math.inf, False
                failed.append(ind)
            else:
                ind.fitness.values = tuple(values)
            self.evaluated.append(ind)
        for ind in failed:
            ind.fitness.values = self._worst()
        with self._random():  # too few to select a generation from: random ones make up the rest
            self.queue = [self._random_individual() for _ in range(self.population_size - len(self.evaluated))]

    def _reject(self, params: Params, predicted: list[float]) -> None:
        """A child the surrogate screened out: its predicted values are its fitness."""
        self._tell([Told(params, tuple(predicted))])

    def _ask(self, n: int) -> list[Params]:
        """The next `n` of this generation, breeding the next one once every asked individual is told."""
        if not self.queue and not self.asked:
            self._breed()
        picks, self.queue = self.queue[:n], self.queue[n:]
        self.asked += picks
        return [self._params(ind) for ind in picks]

    def _tell(self, results: list[Told]) -> None:
        """Set the fitness of asked individuals; failed or unscored ones get the worst values seen."""
        for told in results:
            i = next((k for k, ind in enumerate(self.asked) if self._params(ind) == told.params), None)
            if i is None:
                continue  # not one of ours (e.g. a result from another optimizer)
            ind = self.asked.pop(i)
            self._score(ind, told)
            self.evaluated.append(ind)

    def _score(self, ind: Individual, told: Told) -> None:
        """An individual's fitness from its result; failed or unscored ones get the worst values seen."""
        if told.values is None:  # failed (violation inf), or infeasible before it was scored
            ind.fitness.violation = float(told.violation) if told.violation > 0 else math.inf
            ind.fitness.values = self._worst()
            ind.fitness.scored = False
        else:
            ind.fitness.violation = float(told.violation)
            ind.fitness.values = tuple(told.values)

    def _worst(self) -> tuple[float, ...]:
        told = [ind.fitness.values for ind in self.parents + self.evaluated if ind.fitness.valid]
        if not told:
            return tuple(0.0 for _ in self.directions)
        return tuple((min if d == "maximize" else max)(v[i] for v in told) for i, d in enumerate(self.directions))

    def _breed(self) -> None:
        with self._random():
            for ind in self.evaluated:  # placeholders given before any real values were known
                if not ind.fitness.scored:
                    ind.fitness.values = self._worst()
            # (mu + lambda): parents compete with their children, so the best are never lost
            self.parents, chosen = self._select(self.parents + self.evaluated)
            offspring = [copy.deepcopy(ind) for ind in chosen]
            for a, b in zip(offspring[::2], offspring[1::2]):
                if random.random() < self.cxpb:
                    self._crossover(a, b)
            for ind in offspring:
                self._mutate(ind)
                ind.fitness = self.fitness_class()
        self.generation += 1
        self.evaluated = []
        self.queue = offspring

    def _select(self, pool: list[Individual]) -> tuple[list[Individual], list[Individual]]:
        """(survivors, the parents of the next children): NSGA-II's rank and crowding, DCD tournaments."""
        survivors = tools.selNSGA2(pool, self.population_size)
        return survivors, tools.selTournamentDCD(survivors, self.population_size)

    def _split(self, kind: str) -> list[int]:
        return [i for i, g in enumerate(self.genes) if (g.kind == kind) or (kind == "numeric" and g.kind != "choice")]

    def _fit(self, i: int, value: float) -> float | int:
        low, high = self.genes[i].bounds()
        value = min(max(value, low), high)
        return value if self.genes[i].kind == "float" else int(round(value))

    def _crossover(self, a: Individual, b: Individual) -> None:
        numeric = self._split("numeric")
        if numeric:
            pa, pb = [float(a[i]) for i in numeric], [float(b[i]) for i in numeric]
            lows = [self.genes[i].bounds()[0] for i in numeric]
            highs = [self.genes[i].bounds()[1] for i in numeric]
            spans = [h - lo for lo, h in zip(lows, highs)]
            if all(s > 0 for s in spans):
                tools.cxSimulatedBinaryBounded(pa, pb, eta=self.eta, low=lows, up=highs)
            else:  # SBX divides by the span: genes with one value just stay
                keep = [k for k, s in enumerate(spans) if s > 0]
                sa, sb = [pa[k] for k in keep], [pb[k] for k in keep]
                if keep:
                    tools.cxSimulatedBinaryBounded(sa, sb, eta=self.eta, low=[lows[k] for k in keep],
                                                   up=[highs[k] for k in keep])
                for k, va, vb in zip(keep, sa, sb):
                    pa[k], pb[k] = va, vb
            for i, va, vb in zip(numeric, pa, pb):
                a[i], b[i] = self._fit(i, va), self._fit(i, vb)
        choice = self._split("choice")
        if choice:
            ca, cb = [a[i] for i in choice], [b[i] for i in choice]
            tools.cxUniform(ca, cb, indpb=0.5)
            for i, va, vb in zip(choice, ca, cb):
                a[i], b[i] = va, vb

    def _mutate(self, ind: Individual) -> None:
        indpb = min(1.0, self.mutation / len(self.genes))  # `mutation` genes changed per child, on average
        for i, g in enumerate(self.genes):
            if random.random() >= indpb:
                continue
            if g.kind == "choice":
                ind[i] = random.randrange(g.count)
                continue
            low, high = g.bounds()
            if high <= low:
                continue
            part = [float(ind[i])]
            tools.mutPolynomialBounded(part, eta=self.eta + 5.0, low=[low], up=[high], indpb=1.0)
            moved = self._fit(i, part[0])
            if g.kind == "index" and moved == ind[i]:  # a rounded nudge must still move one grid step
                moved = self._fit(i, ind[i] + random.choice((-1, 1)))
            ind[i] = moved

    # -- state -----------------------------------------------------------------------------------------------
    def _dump(self, inds: list[Individual]) -> list[dict[str, Any]]:
        return [{"genes": list(ind), "values": list(ind.fitness.values) if ind.fitness.valid else None,
                 "violation": None if ind.fitness.violation == math.inf else ind.fitness.violation,
                 "scored": ind.fitness.scored} for ind in inds]

    def _load(self, rows: list[dict[str, Any]]) -> list[Individual]:
        out = []
        for row in rows:
            ind = Individual(row["genes"])
            ind.fitness = self.fitness_class()
            if row["values"] is not None:
                ind.fitness.values = tuple(row["values"])
            ind.fitness.violation = math.inf if row["violation"] is None else float(row["violation"])
            ind.fitness.scored = row.get("scored", row["violation"] is not None)  # older states: failed = inf
            out.append(ind)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Generation, random state and every individual (parents, queued, asked, evaluated) as JSON."""
        state = {"generation": self.generation, "random": self.random_state, "parents": self._dump(self.parents),
                 "queue": self._dump(self.queue), "asked": self._dump(self.asked),
                 "evaluated": self._dump(self.evaluated),
                 "guide": self.guide.state_dict() if self.guide is not None else None}
        return json.loads(json.dumps(state))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the generation, random state and individuals saved by `state_dict`."""
        version, internal, gauss = state["random"]
        self.random_state = (version, tuple(internal), gauss)
        self.generation = state["generation"]
        for key in ("parents", "queue", "asked", "evaluated"):
            setattr(self, key, self._load(state[key]))
        if self.guide is not None and state.get("guide"):
            self.guide.load_state_dict(state["guide"])


class GeneticSearch(EvolutionSearch):
    """A GA for one objective: the best survive, tournaments of 3 pick parents, the same mixed-gene operators.

    Given several objectives it compares them in order (lexicographic); nsga2 finds a front.
    """

    name = "ga"

    def _select(self, pool: list[Individual]) -> tuple[list[Individual], list[Individual]]:
        survivors = tools.selBest(pool, self.population_size)
        return survivors, tools.selTournament(survivors, self.population_size, tournsize=3)
