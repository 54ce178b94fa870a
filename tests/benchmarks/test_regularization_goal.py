"""benchmarks/regularization_goal.py: the goal check of a φ's rows in a transfer_gain table, clause by clause, with
seed mismatches flagged rather than compared, and the card's sentences with their numbers."""

import json

import pytest
import regularization_goal as goal_check
from regularization_goal import FAIL, PASS, UNSETTLED, evaluate_goal, good_for, not_better, not_compared

from mp_hub.errors import ConfigError, DataError

PHI = "metaperturb:tiny-phi"
TARGETS = ("fashion_mnist", "mnist", "animal_mnist")
STD = 0.005


def entry(target, regularizer, accuracy, ece, nll, seeds=3, std=STD, model="resnet20"):
    return {"target": target, "model": model, "regularizer": regularizer, "seeds": seeds,
            "accuracy_mc": (accuracy, std), "ece_mc": (ece, std), "nll_mc": (nll, std)}  # fmt: skip


def table(**changes):
    """Every target: accuracy 80 % for the baselines, ECE and NLL lower from none to DropBlock to the authors' φ, and
    φ better than all (a φ that meets the goal); `changes` maps "<target>/<regularizer>" to replacement rows."""
    figures = {"none": (0.80, 0.10, 0.70), "dropblock": (0.80, 0.06, 0.60), "metaperturb:official": (0.80, 0.05, 0.55),
               PHI: (0.82, 0.04, 0.50)}  # fmt: skip
    rows = []
    for target in TARGETS:
        for regularizer, values in figures.items():
            rows.append(changes.get(f"{target}/{regularizer}", entry(target, regularizer, *values)))
    rows.append(entry("fashion_mnist", PHI, 0.10, 0.90, 9.0, model="vit"))  # another model: never compared
    return rows


def statuses(goal):
    return [clause.status for clause in goal.clauses]


def test_a_phi_better_everywhere_meets_every_clause():
    goal = evaluate_goal(table(), PHI)
    assert goal.status == "met" and statuses(goal) == [PASS] * 5 and goal.targets == TARGETS
    assert not_better(goal) == [] and not_compared(goal) == [] and len(good_for(goal)) == 9
    json.dumps(goal.to_dict())  # a record's field


@pytest.mark.parametrize(
    "changes, failing",
    [
        (
            {
                "mnist/" + PHI: entry("mnist", PHI, 0.78, 0.04, 0.50),  # 2 points below none, one std 0.5
                "mnist/dropblock": entry("mnist", "dropblock", 0.78, 0.06, 0.60),
            },
            0,
        ),
        ({f"{t}/{PHI}": entry(t, PHI, 0.798, 0.04, 0.50) for t in TARGETS[:2]}, 1),  # above none on 1 of 3
        (
            {
                "animal_mnist/" + PHI: entry("animal_mnist", PHI, 0.82, 0.11, 0.50),  # ECE above none's
                "animal_mnist/dropblock": entry("animal_mnist", "dropblock", 0.80, 0.12, 0.60),
            },
            2,
        ),
        ({"animal_mnist/" + PHI: entry("animal_mnist", PHI, 0.82, 0.04, 0.69)}, 3),  # NLL 0.09 above DropBlock's
        ({f"{t}/{PHI}": entry(t, PHI, 0.82, 0.06, 0.56) for t in TARGETS[:2]}, 4),  # ECE worse than the authors' on 2
    ],
    ids=[
        "accuracy-below-none",
        "above-none-on-too-few",
        "ece-above-none",
        "nll-worse-than-dropblock",
        "worse-than-authors-on-most",
    ],
)
def test_each_clause_fails_on_its_own(changes, failing):
    goal = evaluate_goal(table(**changes), PHI)
    assert statuses(goal) == [FAIL if i == failing else PASS for i in range(5)] and goal.status == "not met"


def test_one_std_is_the_larger_of_the_two_rows():
    slightly_below = entry("mnist", PHI, 0.792, 0.04, 0.50, std=0.01)  # 0.8 points below none, its std 1.0
    assert statuses(evaluate_goal(table(**{"mnist/" + PHI: slightly_below}), PHI))[0] == PASS
    tight = entry("mnist", PHI, 0.792, 0.04, 0.50, std=0.005)
    assert statuses(evaluate_goal(table(**{"mnist/" + PHI: tight}), PHI))[0] == FAIL


def test_rows_of_fewer_seeds_are_flagged_and_decide_nothing():
    worse_dropblock_with_two_seeds = entry("mnist", "dropblock", 0.81, 0.01, 0.20, seeds=2)
    goal = evaluate_goal(table(**{"mnist/dropblock": worse_dropblock_with_two_seeds}), PHI)
    assert statuses(goal) == [PASS, PASS, PASS, UNSETTLED, PASS] and goal.status == "unsettled"
    (flagged,) = [c for c in goal.comparisons if c.flag]
    assert flagged.flag == "seeds 3 vs 2 of 3 planned" and "does not settle it" in goal.clauses[3].evidence[1]
    assert "Not like for like: seeds 3 vs 2 of 3 planned." in " ".join(not_better(goal))
    # every row at one seed of three planned (an interrupted benchmark): nothing is settled
    assert set(statuses(evaluate_goal([{**e, "seeds": 1} for e in table()], PHI, planned_seeds=3))) == {UNSETTLED}
    # equal seeds but fewer than another row: the most any row has is the plan by default
    assert evaluate_goal(table(**{"mnist/none": entry("mnist", "none", 0.8, 0.1, 0.7, seeds=4)}), PHI).status == (
        "unsettled"
    )


def test_a_missing_baseline_row_is_said_and_leaves_its_clause_unsettled():
    rows = [e for e in table() if (e["target"], e["regularizer"]) != ("mnist", "dropblock")]
    goal = evaluate_goal(rows, PHI)
    assert statuses(goal)[3] == UNSETTLED and goal.clauses[3].evidence[1] == "mnist: no dropblock row"
    assert not_compared(goal) == ["On mnist there is no row of DropBlock: not compared."]


def test_the_authors_phi_is_not_compared_with_itself():
    goal = evaluate_goal(table(), "metaperturb:official")
    assert [c.statement for c in goal.clauses][-1] == "at least as good as DropBlock on every target"
    assert {c.baseline.label for c in goal.comparisons} == {"none", "dropblock"}


def test_card_sentences_say_what_it_did_and_did_not_with_the_numbers():
    mnist = entry("mnist", PHI, 0.8025, 0.0074, 0.50)
    mnist_none = entry("mnist", "none", 0.80, 0.0070, 0.70)
    goal = evaluate_goal(table(**{"mnist/" + PHI: mnist, "mnist/none": mnist_none}), PHI)
    assert (
        good_for(goal)[1]
        == "On mnist, compared with training with no regularizer, it had a lower NLL (0.500 ± 0.005 vs 0.700 ± 0.005)."
    )
    assert not_better(goal)[0] == (
        "On mnist, compared with training with no regularizer, it was not measurably more accurate (accuracy 80.25 ± "
        "0.50 % vs 80.00 ± 0.50 %, within one standard deviation) and was not better calibrated (ECE 0.74 ± 0.50 % "
        "vs 0.70 ± 0.50 %)."
    )  # fmt: skip
    one_seed = evaluate_goal([{**e, "seeds": 1, "accuracy_mc": (e["accuracy_mc"][0], 0.0)} for e in table()], PHI)
    assert good_for(one_seed)[0].startswith(
        "On fashion_mnist, compared with training with no regularizer, it was more accurate (accuracy 82.00 % vs "
        "80.00 %)"
    )  # one seed: no ± where no spread was measured
    comparison = goal.to_dict()["comparisons"][1]
    assert comparison["target"] == "mnist" and comparison["ece"]["lower"] == "baseline"
    assert comparison["nll"]["lower"] == "phi" and comparison["accuracy"]["delta"] == pytest.approx(0.0025)


def test_bad_input_names_the_problem():
    with pytest.raises(ConfigError, match=r"no resnet20 rows labelled 'metaperturb:other'.*'metaperturb:tiny-phi'"):
        evaluate_goal(table(), "metaperturb:other")
    broken = [{k: v for k, v in e.items() if k != "nll_mc"} for e in table()]
    with pytest.raises(DataError, match=r"lacks \['nll_mc'\]"):
        evaluate_goal(broken, PHI)
    assert goal_check.phi_labels(table()) == ["metaperturb:official", PHI]
