"""Optuna, DEAP, greedy and RL optimizers: behaviour each promises beyond the shared conformance suite."""

import math

import numpy as np
import pytest

import autocomp
from autocomp.config import parse_run_spec
from autocomp.errors import AutocompError
from autocomp.optimizers import LayerProfile, SearchContext, Told, make_optimizer
from autocomp.testing.conformance import check_beats_random, reference_space, run_steps
from autocomp.testing.fake import fake_metrics
from autocomp.testing.tiny import fast_latency, tiny_space

MO = ("maximize", "minimize")
SPACE = tiny_space()
FAST = fast_latency()


def make(name, seed=0, space=None, **settings):
    return make_optimizer(name, space or reference_space(), directions=MO, seed=seed, **settings)


@pytest.mark.parametrize("name", ["uniform", "greedy", "tpe", "optuna-nsga2", "nsga2", "ga", "rl"])
def test_beats_random_on_the_fake_evaluator(name):
    check_beats_random(lambda space, seed: make(name, seed, space))


def test_tpe_study_lives_in_the_run_directory_with_constraints(tmp_path):
    import optuna

    opt = make("tpe", context=SearchContext(workdir=str(tmp_path)), n_startup_trials=2)
    for step in range(3):
        asked = opt.ask(2)
        opt.tell([Told(c, (0.5 + 0.1 * step, 10.0), violation=0.3 if i else 0.0) for i, c in enumerate(asked)])
    study = optuna.load_study(study_name="autocomp", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    assert [t.constraints["violation"] for t in trials] == [0.0, 0.3] * 3


def test_optuna_pruner_hook_stops_a_weak_trial():
    opt = make_optimizer("tpe", reference_space(), directions=("maximize",), seed=0, pruner="median")
    for _ in range(5):
        (c,) = opt.ask(1)
        for step in range(3):
            assert not opt.report(c, step, 0.9)
        opt.tell([Told(c, (0.9,))])
    (weak,) = opt.ask(1)
    assert opt.report(weak, 0, 0.1) is True


def test_initial_candidates_are_asked_first():
    space = reference_space()
    seeds = [space.sample(np.random.default_rng(i)) for i in range(3)]
    for name in ("tpe", "nsga2"):
        assert make(name, initial=seeds).ask(3) == seeds


def test_nsga2_breeds_generations_with_constrained_domination():
    from autocomp.optimizers.evolution import ConstrainedFitness

    opt = make("nsga2", population=8)
    asked = run_steps(opt, 12, batch=4)  # six generations of eight
    assert opt.generation == 5 and len(asked) == 48
    assert all(reference_space().contains(c) for c in asked)

    class F(ConstrainedFitness):
        weights = (1.0, -1.0)

    feasible, infeasible = F((0.1, 100.0)), F((0.9, 1.0))
    infeasible.violation = 0.5
    assert feasible.dominates(infeasible) and not infeasible.dominates(feasible)
    assert infeasible < feasible  # what tournaments compare


def test_greedy_measures_each_knob_alone_then_combines():
    space = reference_space()
    opt = make("greedy", levels=3, sweep=5)
    reference, *moves = opt.ask(100)
    assert reference == {"fc1.prune.ratio": 0.0, "fc1.quantize.bits": 8, "fc1.lowrank.rank_ratio": 1.0,
                         "fc2.prune.ratio": 0.0, "fc2.quantize.bits": 8, "fc2.lowrank.rank_ratio": 1.0,
                         "fc3.prune.ratio": 0.0, "fc3.quantize.bits": 8, "fc3.lowrank.rank_ratio": 1.0}
    assert all(sum(m[k] != reference[k] for k in m) == 1 for m in moves)
    assert len(moves) == 3 * (3 + 3 + 2)
    assert opt.ask(1) == []  # nothing to combine before the curves are told
    opt.tell([Told(c, tuple(fake_metrics(space, c).values())) for c in [reference, *moves]])
    combined = opt.ask(100)
    assert combined and all(space.contains(c) for c in combined)
    sizes = [fake_metrics(space, c)["size_bytes"] for c in combined]
    assert sizes[-1] < sizes[0]  # larger tolerances compress more
    assert opt.ask(1) == []


def profiles():
    return tuple(LayerProfile(name=n, kind="Linear", in_channels=i, out_channels=o, params=i * o, flops=2 * i * o)
                 for n, i, o in (("fc1", 784, 300), ("fc2", 300, 100), ("fc3", 100, 10)))


def test_compression_env_passes_gymnasiums_checker():
    from gymnasium.utils.env_checker import check_env

    from autocomp.optimizers.rl import CompressionEnv

    space = reference_space()
    env = CompressionEnv(space, profiles(), reward_fn=lambda p: fake_metrics(space, p)["accuracy"])
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (11 + 3,) and len(env.units) == 3


@pytest.mark.parametrize("resource,budget", [("size", 0.2), ("flops", 0.5)])
def test_resource_mode_clips_every_episode_to_the_budget(resource, budget):
    from autocomp.optimizers.rl import CompressionEnv

    env = CompressionEnv(reference_space(), profiles(), budget=budget, resource=resource)
    rng = np.random.default_rng(0)
    estimates = []
    for _ in range(30):
        env.reset()
        done = False
        while not done:
            _, _, done, _, info = env.step(rng.uniform(0, 0.3, 3).astype(np.float32))  # timid actions
        estimates.append(info["estimated"])
    assert max(estimates) <= budget + 1e-6
    assert min(estimates) > 0.5 * budget  # clipped to the budget, not beyond it


def test_budget_range_gives_each_episode_its_own_budget():
    from autocomp.optimizers.rl import CompressionEnv

    env = CompressionEnv(reference_space(), profiles(), budget=[0.05, 0.5])
    seen = []
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        budget = float(obs[10])
        done = False
        while not done:
            _, _, done, _, info = env.step(np.zeros(3, dtype=np.float32))  # least compressive asks
        assert 0.05 - 1e-6 <= budget <= 0.5 + 1e-6 and info["estimated"] <= budget + 1e-6
        seen.append(budget)
    assert max(seen) / min(seen) > 3  # spread over the range, not one point
    env.reset(options={"budget": 0.1})
    assert env.budget == 0.1


def test_rl_rolls_out_a_batch_of_episodes_and_learns_from_them():
    space = reference_space()
    opt = make("rl", context=SearchContext(layers=profiles()), warmup=4, batch_size=8)
    first = opt.ask(4)
    assert len(first) == 4 and len({tuple(sorted(c.items())) for c in first}) == 4
    opt.tell([Told(c, tuple(fake_metrics(space, c).values())) for c in first])
    assert opt.model.replay_buffer.size() == 4 * 3  # one transition per layer
    before = [p.detach().clone() for p in opt.model.actor.parameters()]
    for _ in range(3):
        batch = opt.ask(4)
        opt.tell([Told(c, tuple(fake_metrics(space, c).values())) for c in batch])
    assert any(not (a == b.detach()).all() for a, b in zip(before, opt.model.actor.parameters()))


def test_bad_settings_are_clear_errors():
    with pytest.raises(AutocompError, match="optimizer 'nsga2' has no setting 'popsize'.*population"):
        make("nsga2", popsize=10)
    with pytest.raises(AutocompError, match="setting 'population' must be int, not '8'"):
        make("nsga2", population="8")
    with pytest.raises(AutocompError, match="optimizer 'rl': budget is a fraction.*not 1.5"):
        make("rl", budget=1.5)
    with pytest.raises(AutocompError, match="setting 'budget' must be float or list, not 'half'"):
        make("rl", budget="half")


@pytest.mark.parametrize("name", ["tpe", "nsga2", "greedy", "rl"])
def test_extending_a_run_continues_the_same_search(tmp_path, tiny, name):
    """A run resumed from its checkpoint asks what an uninterrupted run asks (optimizer state restored)."""
    model, data = tiny
    settings = {"tpe": {"n_startup_trials": 2}, "nsga2": {"population": 4}, "greedy": {"levels": 2},
                "rl": {"warmup": 2, "batch_size": 4}}[name]
    args = dict(space=SPACE, seed=0, runs_dir=tmp_path, progress=False, latency=FAST, optimizer=name,
                optimizer_settings=settings)
    straight = autocomp.search(model, data, trials=8, name="a", **args)
    autocomp.search(model, data, trials=4, name="b", **args)
    resumed = autocomp.search(model, data, trials=8, name="b", resume=True, **args)
    assert [t.params for t in resumed.trials] == [t.params for t in straight.trials]
    assert all(math.isfinite(t.metrics.get("accuracy", math.nan)) for t in resumed.trials)


YAML_WITH_OPTIMIZER = """version: 1
model: {name: tiny}
data: {name: tiny}
optimizer:
  name: nsga2
  nsga2: {population: 8, seed_uniform: 2}
  tpe:
    n_startup_trials: many
groups:
  - name: all
    layers: ["type:Linear"]
    primitives:
      prune: {ratio: {float: [0.0, 0.9], step: 0.1}}
"""


def test_optimizer_section_is_read_written_and_checked_with_its_line():
    from autocomp.config import dump_run_spec
    from autocomp.errors import SpaceError
    from autocomp.session import check_optimizer_spec

    spec = parse_run_spec(YAML_WITH_OPTIMIZER, file="s.yaml")
    assert spec.optimizer.name == "nsga2" and spec.optimizer.settings["nsga2"] == {"population": 8, "seed_uniform": 2}
    again = parse_run_spec(dump_run_spec(spec))
    assert again.optimizer == spec.optimizer and dump_run_spec(again) == dump_run_spec(spec)
    wrong_type = r"s.yaml:8: .*n_startup_trials. must be int.*key .optimizer.tpe.n_startup_trials"
    with pytest.raises(SpaceError, match=wrong_type) as err:
        check_optimizer_spec(spec)
    assert err.value.value == "many"
    unknown = parse_run_spec(YAML_WITH_OPTIMIZER.replace("  tpe:\n    n_startup_trials: many\n", "  cmaes: {}\n"),
                             file="s.yaml")
    with pytest.raises(SpaceError, match=r"s.yaml:7.*unknown optimizer"):
        check_optimizer_spec(unknown)


def test_seed_from_starts_an_optimizer_from_another_runs_front(tmp_path, tiny):
    from autocomp.session import front_params

    model, data = tiny
    args = dict(space=SPACE, seed=0, runs_dir=tmp_path, progress=False, latency=FAST)
    greedy = autocomp.search(model, data, trials=12, name="g", optimizer="greedy",
                             optimizer_settings={"levels": 2}, **args)
    seeds = front_params(tmp_path / "g")
    assert seeds == [t.params for t in greedy.pareto]
    seeded = autocomp.search(model, data, trials=len(seeds) + 2, name="n", optimizer="tpe",
                             optimizer_settings={"initial": seeds}, **args)
    assert [t.params for t in seeded.trials[: len(seeds)]] == seeds
