"""Teacher DAGs: the nodes a spec resolves to, their order and their keys."""
from __future__ import annotations

import math

import pytest

from kd_tune.core import identity
from kd_tune.core.config import RunConfig
from kd_tune.plan.planner import plan_trial, plan_trials
from kd_tune.plan.search_space import expand
from kd_tune.plan.teacher_dag import TeacherNode, teacher_dag

RUN = RunConfig(teacher="cnn-16", student="cnn-4", loss="kl", tau=4.0, alpha=0.9, epochs=3)


def dag(spec: str, **changes) -> tuple[TeacherNode, ...]:
    return teacher_dag(RUN.replace(teacher=spec, **changes))


def key(spec: str, **changes) -> str:
    return dag(spec, **changes)[-1].key


def test_a_plain_architecture_is_one_ce_node_with_todays_key():
    (node,) = dag("cnn-16")
    assert node.kind == "ce" and node.spec == node.arch == "cnn-16" and node.sources == ()
    assert node.key == identity.teacher_key(RUN)
    assert node.run == RUN.teacher_config()


def test_a_chain_lists_its_steps_in_training_order():
    nodes = dag("cnn-16>cnn-8[kl:3]>cnn-4[mse]")
    assert [(n.kind, n.spec, n.arch) for n in nodes] == [
        ("ce", "cnn-16", "cnn-16"),
        ("sequential", "cnn-16>cnn-8[kl:3]", "cnn-8"),
        ("sequential", "cnn-16>cnn-8[kl:3]>cnn-4[mse]", "cnn-4"),
    ]
    assert nodes[1].sources == (nodes[0].key,) and nodes[2].sources == (nodes[1].key,)
    # Each step trains by the teacher's recipe with its own loss; alpha not named is the run's.
    step = nodes[1].run
    assert (step.student, step.teacher, step.loss, step.tau, step.alpha) == ("cnn-8", "cnn-16", "kl", 3.0, 0.9)
    assert nodes[2].run.loss == "mse" and nodes[2].run.tau == 1.0 and nodes[2].run.teacher == "cnn-16>cnn-8[kl:3]"
    assert step.seed == RUN.teacher_seed and step.epochs == RUN.epochs


@pytest.mark.parametrize("other", [
    "cnn-32>cnn-8[kl:3]>cnn-4[mse]",  # the first network
    "cnn-16@2>cnn-8[kl:3]>cnn-4[mse]",  # the first network under-trained
    "cnn-16>cnn-16[kl:3]>cnn-4[mse]",  # the middle step's architecture
    "cnn-16>cnn-8[kl:5]>cnn-4[mse]",  # the middle step's tau
    "cnn-16>cnn-8[kl:3:0.5]>cnn-4[mse]",  # the middle step's alpha
    "cnn-16>cnn-8[mse]>cnn-4[mse]",  # the middle step's loss
    "cnn-16>cnn-8[kl:3]>cnn-4[mse:0.5]",  # the last step's alpha
    "cnn-16>cnn-8[kl:3]>cnn-4[kl:3]",  # the last step's loss
    "cnn-16>cnn-8[kl:3]>mlp-32[mse]",  # the last step's architecture
    "cnn-16>cnn-8[kl:3]",  # a step fewer
])
def test_a_chains_key_changes_with_any_step(other):
    assert key(other) != key("cnn-16>cnn-8[kl:3]>cnn-4[mse]")


def test_default_steps_take_the_runs_loss_tau_and_alpha():
    chain = "cnn-16>cnn-8"
    assert dag(chain)[-1].run.loss == "kl" and dag(chain)[-1].run.tau == 4.0 and dag(chain)[-1].run.alpha == 0.9
    assert key(chain) == key("cnn-16>cnn-8[kl:4:0.9]")
    for change in ({"tau": 3.0}, {"alpha": 0.5}, {"loss": "mse", "tau": 1.0}):
        assert key(chain, **change) != key(chain), change
    # A named step does not follow the run; the seed and architecture of the student never matter.
    assert key("cnn-16>cnn-8[kl:3:1]", tau=20.0, alpha=0.1) == key("cnn-16>cnn-8[kl:3:1]")
    assert key(chain, seed=4, student="mlp-8") == key(chain)
    # What every teacher depends on: the recipe, its seed and epochs, the data.
    for change in ({"lr": RUN.lr / 2}, {"teacher_seed": 1}, {"teacher_epochs": 2}, {"val_size": 100}):
        assert key(chain, **change) != key(chain), change


def test_an_ensembles_members_are_seeds_or_architectures_and_its_key_covers_them():
    nodes = dag("3xcnn-16")
    members, ensemble = nodes[:3], nodes[3]
    assert [m.run.seed for m in members] == [0, 1, 2] and len({m.key for m in members}) == 3
    assert members[0].key == identity.teacher_key(RUN)  # the first member is the plain teacher
    assert ensemble.kind == "ensemble" and ensemble.sources == tuple(m.key for m in members)
    assert ensemble.arch == "cnn-16+cnn-16+cnn-16" and ensemble.spec == "3xcnn-16"
    assert key("cnn-16+cnn-16+cnn-16") == key("3xcnn-16")
    assert len({key("3xcnn-16"), key("2xcnn-16"), key("cnn-16+mlp-32"), key("3xcnn-16", teacher_seed=1),
                key("3xcnn-16@2")}) == 5
    # One network in several places of a spec is one node.
    assert len(dag("cnn-16+cnn-8>cnn-4")) == 4


def test_an_undertrained_teacher_keeps_the_full_recipe_and_its_stop_epoch():
    (node,) = dag("cnn-16@2")
    assert node.kind == "undertrained" and node.stop_epoch == 2 and node.run.epochs == RUN.epochs
    assert node.key == identity.undertrained_key(identity.teacher_key(RUN), 2)
    assert len({key("cnn-16@2"), key("cnn-16@1"), key("cnn-16"), key("cnn-16@2", teacher_epochs=5),
                key("cnn-16@2", lr=RUN.lr / 2)}) == 5


def test_nodes_round_trip_through_plain_values_and_travel_with_the_trial():
    for node in dag("2xcnn-16@2>cnn-8[kl:inf]"):
        assert TeacherNode.from_dict(node.to_dict()) == node
    trial = plan_trial(RUN.replace(teacher="cnn-16>cnn-8"))
    assert trial.teachers == dag("cnn-16>cnn-8") and trial.teacher_key == trial.teachers[-1].key


def test_the_plan_lists_every_node_once_in_dependency_order():
    space = [{"teacher": ["cnn-16", "cnn-16>cnn-8", "2xcnn-16", "cnn-16@2"], "tau": [1.0, math.inf]},
             {"loss": ["ce"], "teacher": ["cnn-32>cnn-8"]}]
    plan = plan_trials(expand(RUN, space))
    nodes = plan.teacher_nodes
    # cnn-16, its seed-1 twin, the ensemble, cnn-16@2, and the chain's step per tau; a CE trial needs none.
    assert [n.kind for n in nodes.values()].count("sequential") == 2 and len(nodes) == 6
    seen: set[str] = set()
    for node in nodes.values():
        assert set(node.sources) <= seen
        seen.add(node.key)
    assert plan.teacher_nodes is nodes  # computed once


def test_a_default_step_distils_with_the_runs_loss_options_and_a_named_one_with_its_own():
    run = RUN.replace(teacher="cnn-16>cnn-8", loss="dkd", dkd_beta=6.0)
    step = teacher_dag(run)[-1]
    assert (step.run.loss, step.run.dkd_beta, step.run.dkd_warmup) == ("dkd", 6.0, 20)
    assert step.key != teacher_dag(run.replace(dkd_beta=8.0))[-1].key
    named = teacher_dag(run.replace(teacher="cnn-16>cnn-8[kl:3]"))[-1]
    assert (named.run.loss, named.run.tau, named.run.dkd_beta, named.run.standardize) == ("kl", 3.0, None, False)
    # a plain teacher is the same node for every loss of the student
    assert teacher_dag(run.replace(teacher="cnn-16"))[-1].key == teacher_dag(RUN)[-1].key


def test_labels_name_standardization_and_options_away_from_their_published_values():
    from kd_tune.plan.planner import label

    assert label(RUN) == "kl tau=4 alpha=0.9 seed=0"
    assert label(RUN.replace(standardize=True, tau=2.0)) == "kl std tau=2 alpha=0.9 seed=0"
    assert label(RUN.replace(loss="dkd")) == "dkd tau=4 alpha=0.9 seed=0"
    assert label(RUN.replace(loss="dkd", dkd_beta=6.0)) == "dkd tau=4 alpha=0.9 dkd_beta=6 seed=0"
    assert label(RUN.replace(loss="mse", tau=1.0, standardize=True)) == "mse std alpha=0.9 seed=0"
