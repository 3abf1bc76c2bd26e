"""The validation-only hyper-parameter search: grid parsing, the selection rule, the trainer search and the recipe
flag."""

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from trainer_utils import sequence_dataset, tiny_sequence_classifier

from mbls_nlp import CalibrationConfig, CalibrationTrainer
from mbls_nlp.hparam_search import (
    DEFAULT_SEARCH_GRIDS,
    SearchArguments,
    edge_note,
    grid_edges,
    parse_search_grid,
    search_calibration_hparams,
    select_candidate,
)

pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[1]
NEWSGROUPS = ROOT.parent / "shared" / "data" / "20newsgroups"


def test_docstring_examples_run():
    import doctest

    import mbls_nlp.hparam_search

    result = doctest.testmod(mbls_nlp.hparam_search)
    assert result.attempted >= 4 and result.failed == 0


# ---- grid parsing ----


def test_default_grids_are_the_issue_grids():
    assert parse_search_grid(None, "mbls") == {"margin": (0.0, 2.0, 4.0, 6.0, 8.0, 10.0), "alpha": (0.1, 0.5, 1.0)}
    assert parse_search_grid(None, "ls") == {"ls_epsilon": (0.01, 0.05, 0.1, 0.2)}
    assert parse_search_grid(None, "focal") == {"focal_gamma": (1.0, 2.0, 3.0, 5.0)}
    for loss_type in ("ce", "flsd", "brier"):  # nothing to tune: an empty grid
        assert parse_search_grid(None, loss_type) == {} and loss_type not in DEFAULT_SEARCH_GRIDS


def test_default_grids_in_words_for_the_help_and_the_readme():
    from mbls_nlp.hparam_search import SEARCHABLE_HPARAMS, describe_default_grids

    assert describe_default_grids() == (
        "ls: ls_epsilon 0.01,0.05,0.1,0.2; focal: focal_gamma 1,2,3,5; ecp: ecp_beta 0.05,0.1,0.2,0.5; "
        "mmce: mmce_weight 0.5,1,2,4; mbls: margin 0,2,4,6,8,10 x alpha 0.1,0.5,1; acls: acls_margin 6,8,10,12 x "
        "acls_alpha 0.05,0.1,0.2; dfl: dfl_gamma 2,3,4,5; cals: cals_margin 5,10,20; ce, flsd and brier have nothing "
        "to search"
    )
    help_text = SearchArguments.__dataclass_fields__["search_grid"].metadata["help"]
    assert describe_default_grids() in help_text
    assert SEARCHABLE_HPARAMS["mbls"] == {"margin": "margin", "alpha": "alpha"}
    assert (
        set(SEARCHABLE_HPARAMS)
        == set(DEFAULT_SEARCH_GRIDS)
        == {"ls", "focal", "ecp", "mmce", "mbls", "acls", "dfl", "cals"}
    )


def test_grid_strings_and_dicts():
    assert parse_search_grid(" margin = 0, 5 ; alpha=1 ", "mbls") == {"margin": (0.0, 5.0), "alpha": (1.0,)}
    assert parse_search_grid({"ls_epsilon": [0.1]}, "ls") == {"ls_epsilon": (0.1,)}


@pytest.mark.parametrize(
    "grid, loss_type, error, match",
    [
        ("ls_epsilon=0.1", "mbls", ValueError, "cannot vary 'ls_epsilon' for loss_type='mbls'; allowed: \\['alpha'"),
        ("margin=1", "ce", ValueError, "allowed: none"),
        ("margin=-1", "mbls", ValueError, "`margin` must be >= 0"),
        ("ls_epsilon=1.0", "ls", ValueError, "`epsilon` must be in \\[0, 1\\)"),
        ("margin", "mbls", ValueError, "name=v1,v2"),
        ("margin=a,b", "mbls", ValueError, "must be numbers"),
        ("margin=1,1", "mbls", ValueError, "repeats"),
        ("margin=", "mbls", ValueError, "no value"),
        ("margin=1", "hinge", ValueError, "loss_type"),
        (["margin"], "mbls", TypeError, "string, a dict or None"),
    ],
)
def test_bad_grids_are_rejected(grid, loss_type, error, match):
    with pytest.raises(error, match=match):
        parse_search_grid(grid, loss_type)


def test_search_arguments_validate_the_accuracy_drop():
    with pytest.raises(ValueError, match="max_accuracy_drop"):
        SearchArguments(max_accuracy_drop=-1.0)
    with pytest.raises(TypeError, match="max_accuracy_drop"):
        SearchArguments(max_accuracy_drop="1")


# ---- the selection rule ----


def row(accuracy, ece):
    return {"eval_accuracy": accuracy, "eval_ece": ece}


def test_selection_by_hand():
    rows = [row(0.700, 0.100), row(0.685, 0.010), row(0.695, 0.050), row(0.690, 0.050)]
    # best accuracy 0.700; a 1-point window keeps rows 0, 2 (0.695) and 3 (0.690, exactly at the edge), drops row 1
    # (0.685, the lowest ECE). ECE 0.050 ties between rows 2 and 3: the earlier wins.
    assert select_candidate(rows, max_accuracy_drop=1.0, selection_metric="ece") == 2
    assert select_candidate(rows, max_accuracy_drop=1.5, selection_metric="ece") == 1  # 0.685 is now inside the window
    assert select_candidate(rows, max_accuracy_drop=0.0, selection_metric="ece") == 0  # only the most accurate one
    assert select_candidate([row(0.3, 0.2)], 1.0, selection_metric="ece") == 0


def test_grid_edges_by_hand():
    grid = {"margin": (2.0, 4.0, 6.0, 10.0), "alpha": (0.1, 0.5, 1.0)}
    assert grid_edges(grid, {"margin": 10.0, "alpha": 0.5}) == {"margin": "highest"}
    assert grid_edges(grid, {"margin": 2.0, "alpha": 1.0}) == {"margin": "lowest", "alpha": "highest"}
    assert grid_edges(grid, {"margin": 6.0, "alpha": 0.5}) == {}
    # the grid's order does not matter, only its smallest and largest values; one-value axes are no search
    assert grid_edges({"gamma": (3.0, 1.0, 2.0)}, {"gamma": 3.0}) == {"gamma": "highest"}
    assert grid_edges({"margin": (10.0,)}, {"margin": 10.0}) == {}
    assert edge_note({"margin": "lowest", "alpha": "highest"}, {"margin": 2.0, "alpha": 1.0}) == (
        "At the grid's edge: margin=2 is the lowest value of its grid; alpha=1 is the highest value of its grid. "
        "The rule's optimum may lie beyond them: a grid extended past them (`--search_grid`) would tell."
    )
    assert edge_note({}, {"margin": 6.0}) == ""
    with pytest.raises(ValueError, match=r"`chosen\['margin'\]` = 3.0 is not a value of its grid"):
        grid_edges(grid, {"margin": 3.0, "alpha": 0.5})
    with pytest.raises(ValueError, match="`chosen` has no value for 'alpha'"):
        grid_edges(grid, {"margin": 2.0})
    with pytest.raises(TypeError, match="`grid` must be a dict"):
        grid_edges([2.0, 4.0], {"margin": 2.0})
    with pytest.raises(TypeError, match="`chosen` must be a dict"):
        grid_edges(grid, 2.0)


def test_selection_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="empty"):
        select_candidate([], 1.0)
    with pytest.raises(ValueError, match="non-finite eval_ece"):
        select_candidate([row(0.5, float("nan"))], 1.0, selection_metric="ece")


def candidate(accuracy, dce, nll, n=400):
    return {"eval_accuracy": accuracy, "eval_dce": dce, "eval_nll": nll, "eval_samples": n}


def test_default_rule_keeps_the_candidates_not_significantly_less_accurate():
    rows = [candidate(0.80, 0.05, 0.60), candidate(0.76, 0.02, 0.70), candidate(0.75, 0.01, 0.65)]
    rows.append(candidate(0.78, 0.03, 0.68))
    # n = 400: SE of the difference to the best (0.80: 0.8 * 0.2 / 400 = 0.0004)
    #   0.76: sqrt(0.0004 + 0.76 * 0.24 / 400) = sqrt(0.000856) = 0.02926, 1.645 * SE = 0.0481 >= 0.04: kept
    #   0.75: sqrt(0.0004 + 0.75 * 0.25 / 400) = sqrt(0.00086875) = 0.02948, 1.645 * SE = 0.0485 < 0.05: out
    #   0.78: kept (0.02 < 0.048); the lowest dce among rows 0, 1, 3 is row 1 (0.02)
    assert select_candidate(rows) == 1
    # n = 1000: 0.76: sqrt((0.16 + 0.1824) / 1000) = 0.018504, 1.645 * SE = 0.0304 < 0.04: out
    #   0.78: sqrt((0.16 + 0.1716) / 1000) = 0.01821, 1.645 * SE = 0.0300 >= 0.02: kept -> row 3 (dce 0.03)
    assert select_candidate([{**r, "eval_samples": 1000} for r in rows]) == 3
    # the override: within 5 points keeps 0.75 as well (exactly at the edge), whose dce is the lowest
    assert select_candidate(rows, max_accuracy_drop=5.0) == 2
    assert select_candidate(rows, selection_metric="nll") == 0  # NLL 0.60 among rows 0, 1, 3


def test_equal_dce_goes_to_the_lower_nll_then_the_earlier_row():
    rows = [candidate(0.70, 0.0, 0.90), candidate(0.70, 0.0, 0.80), candidate(0.70, 0.0, 0.80)]
    assert select_candidate(rows) == 1


def test_the_recorded_20ng_mbls_sweep():
    # benchmarks/RESULTS.md, tuned 20NG study: validation accuracy / ECE (%) of the MbLS grid, margin-major
    # (margin 0..10 x alpha 0.1, 0.5, 1), on 1,132 validation messages; only accuracy and ECE are recorded there.
    sweep = [
        (47.88, 10.60), (54.51, 34.86), (32.33, 27.32), (58.48, 12.35), (57.24, 31.13), (53.09, 34.68),
        (55.48, 9.87), (54.95, 18.11), (56.10, 22.42), (55.04, 7.35), (53.45, 12.61), (54.59, 13.63),
        (54.86, 7.07), (54.33, 10.18), (54.59, 9.68), (54.06, 5.29), (52.92, 6.71), (53.00, 6.83),
    ]  # fmt: skip
    rows = [{"eval_accuracy": a / 100, "eval_ece": e / 100, "eval_samples": 1132} for a, e in sweep]
    # 1.645 * sqrt(0.5848 * 0.4152 / 1132 + a (1 - a) / 1132) is 3.41-3.43 points for these accuracies: kept are
    # 58.48, 57.24 (1.24 behind), 56.10 (2.38) and 55.48 (3.00); 55.04 (3.44 behind, window 3.42) is just out
    assert select_candidate(rows, selection_metric="ece") == 6  # margin 4, alpha 0.1: ECE 9.87
    assert select_candidate(rows, max_accuracy_drop=1.0, selection_metric="ece") == 3  # the recorded choice


def test_selection_rule_bad_input():
    with pytest.raises(ValueError, match=r"`selection_metric` must be one of \('dce', 'nll', 'ece'\)"):
        select_candidate([candidate(0.5, 0.1, 1.0)], selection_metric="brier")
    with pytest.raises(ValueError, match="has no eval_samples"):
        select_candidate([{"eval_accuracy": 0.5, "eval_dce": 0.1, "eval_nll": 1.0}])
    with pytest.raises(ValueError, match="has no eval_dce"):
        select_candidate([row(0.5, 0.1)], 1.0)
    with pytest.raises(ValueError, match="eval_samples < 1"):
        select_candidate([candidate(0.5, 0.1, 1.0, n=0)])
    with pytest.raises(ValueError, match="`selection_metric`"):
        SearchArguments(selection_metric="accuracy")
    assert SearchArguments().max_accuracy_drop is None  # the default is the test


# ---- the search inside CalibrationTrainer ----


def search_trainer(tmp_path, loss_type, **config):
    settings = dict(per_device_train_batch_size=8, num_train_epochs=2, learning_rate=0.05, report_to="none",
                    save_strategy="no", disable_tqdm=True, seed=0)  # fmt: skip
    args = CalibrationConfig(output_dir=str(tmp_path), loss_type=loss_type, **{**settings, **config})
    return CalibrationTrainer(
        model_init=lambda: tiny_sequence_classifier(seed=0),
        args=args,
        train_dataset=sequence_dataset(48, seed=0),
        eval_dataset=sequence_dataset(32, seed=1),
    )


def test_search_trains_each_candidate_with_its_own_loss(tmp_path, monkeypatch):
    trainer = search_trainer(tmp_path, "ls")
    seen = []  # (args value, loss value) at each rebuild: the loss must follow the trial's arguments
    rebuild = CalibrationTrainer.rebuild_loss

    def recording_rebuild(self):
        rebuild(self)
        seen.append((self.args.ls_epsilon, self.loss_fn.epsilon))

    monkeypatch.setattr(CalibrationTrainer, "rebuild_loss", recording_rebuild)
    result = search_calibration_hparams(trainer, "ls_epsilon=0.0,0.3", max_accuracy_drop=100.0, selection_metric="ece")
    assert {pair for pair in seen} >= {(0.0, 0.0), (0.3, 0.3)}
    assert all(args_value == loss_value for args_value, loss_value in seen)
    rows = result.rows
    assert [r["ls_epsilon"] for r in rows] == [0.0, 0.3]  # grid order, whatever order optuna drew them in
    # With every candidate allowed, the choice is the lowest validation ECE.
    assert result.chosen_index == min(range(2), key=lambda i: (rows[i]["eval_ece"], i))
    assert trainer.args.ls_epsilon == result.chosen["ls_epsilon"] == trainer.loss_fn.epsilon
    assert result.summary()["search_candidates"] == 2

    # Training the chosen candidate again gives the model the search measured (same seed, CPU is deterministic).
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_ece"] == pytest.approx(rows[result.chosen_index]["eval_ece"], abs=1e-6)
    assert metrics["eval_accuracy"] == rows[result.chosen_index]["eval_accuracy"]

    table = (tmp_path / "search.md").read_text()
    assert "| ls_epsilon | val Acc (%) | val ECE (%) | val dCE (%) | val NLL | time (s) | chosen |" in table
    assert table.count("**yes**") == 1
    # two candidates: whichever is chosen is at an edge of the grid, and the table says so
    where = "lowest" if result.chosen["ls_epsilon"] == 0.0 else "highest"
    assert result.edges == {"ls_epsilon": where}
    assert f"ls_epsilon={result.chosen['ls_epsilon']:g} is the {where} value of its grid" in table


def _weights(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def count_trainings(monkeypatch) -> list:
    """The `trial` of every `CalibrationTrainer.train` call from now on (None for a plain training)."""
    trainings = []
    train = CalibrationTrainer.train

    def counting_train(self, *args, **kwargs):
        trainings.append(kwargs.get("trial"))
        return train(self, *args, **kwargs)

    monkeypatch.setattr(CalibrationTrainer, "train", counting_train)
    return trainings


@pytest.mark.parametrize("loss_type, grid", [("ls", "ls_epsilon=0.0,0.3"), ("cals", "cals_margin=2,20")])
def test_the_kept_candidate_is_the_model_a_second_training_gives(tmp_path, monkeypatch, loss_type, grid):
    # keep_models=True (the default) leaves the chosen candidate in the trainer: the same weights, training history,
    # loss state (CALS multipliers) and training metrics as training it again, which keep_models=False needs.
    trainings = count_trainings(monkeypatch)
    epoch = {"eval_strategy": "epoch", "logging_strategy": "epoch"}
    kept = search_trainer(tmp_path / "kept", loss_type, **epoch)
    result = search_calibration_hparams(kept, grid, max_accuracy_drop=100.0, selection_metric="ece")
    assert len(trainings) == 2 and result.train_metrics is not None  # one training per candidate, none more
    assert not (tmp_path / "kept" / "search_models").exists()  # the stored candidates are deleted
    assert kept._trial is None
    assert not kept.state.is_hyper_param_search and kept.state.trial_params is None  # as a plain training's state
    assert kept.state.is_world_process_zero

    again = search_trainer(tmp_path / "again", loss_type, **epoch)
    other = search_calibration_hparams(again, grid, max_accuracy_drop=100.0, selection_metric="ece", keep_models=False)
    assert other.train_metrics is None and other.chosen == result.chosen
    metrics = again.train().metrics
    assert len(trainings) == 5  # two candidates, then the chosen one a second time

    kept_weights, again_weights = _weights(kept.model), _weights(again.model)
    assert kept_weights.keys() == again_weights.keys()
    assert all(torch.equal(kept_weights[name], again_weights[name]) for name in kept_weights)

    def history(trainer):  # the per-epoch numbers the recipe saves in trainer_state.json, timings left out
        timing = ("_runtime", "_per_second")
        return [{k: v for k, v in e.items() if not k.endswith(timing)} for e in trainer.state.log_history]

    assert history(kept) == history(again) and any("eval_ece" in entry for entry in history(kept))
    assert kept.state.global_step == again.state.global_step
    assert result.train_metrics.keys() == metrics.keys()
    assert result.train_metrics["train_loss"] == pytest.approx(metrics["train_loss"], rel=1e-6)

    def same(a, b):  # a loss state: tensors, numbers and dicts of them (the CALS multipliers after the last epoch)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b

    assert same(kept.loss_fn.state_dict(), again.loss_fn.state_dict())
    assert kept._scheduled_epochs == again._scheduled_epochs
    # the kept model is the one whose validation numbers chose it
    chosen_row = result.rows[result.chosen_index]
    evaluation = kept.evaluate()
    assert evaluation["eval_accuracy"] == chosen_row["eval_accuracy"]
    assert evaluation["eval_ece"] == pytest.approx(chosen_row["eval_ece"], abs=1e-9)


def test_every_candidate_trains_to_the_end_no_pruning(tmp_path, monkeypatch):
    # optuna's default MedianPruner stops a trial whose intermediate value is worse than the median of the earlier
    # trials' (from the 6th trial on): the rule needs every candidate's end-of-training numbers.
    epochs = []
    train = CalibrationTrainer.train

    def recording_train(self, *args, **kwargs):
        out = train(self, *args, **kwargs)
        epochs.append(self.state.epoch)
        return out

    monkeypatch.setattr(CalibrationTrainer, "train", recording_train)
    trainer = search_trainer(tmp_path, "ls", eval_strategy="epoch", logging_strategy="epoch", num_train_epochs=3)
    grid = "ls_epsilon=" + ",".join(str(v) for v in (0.0, 0.7, 0.1, 0.6, 0.2, 0.5, 0.3, 0.4))
    result = search_calibration_hparams(trainer, grid, max_accuracy_drop=100.0, selection_metric="ece")
    assert epochs == [3.0] * 8 and len(result.rows) == 8  # a pruned trial raises out of train(): not recorded


def test_a_failed_search_leaves_no_stored_models(tmp_path, monkeypatch):
    trainer = search_trainer(tmp_path, "ls", eval_strategy="epoch")
    calls = []
    evaluate = CalibrationTrainer.evaluate

    def failing_evaluate(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the second candidate's first evaluation, after the first candidate was stored
            raise RuntimeError("out of memory")
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(CalibrationTrainer, "evaluate", failing_evaluate)
    with pytest.raises(RuntimeError, match="out of memory"):
        search_calibration_hparams(trainer, "ls_epsilon=0.0,0.3", max_accuracy_drop=100.0)
    assert not (tmp_path / "search_models").exists()


def test_resume_with_a_kept_search_is_refused(tmp_path):
    from mbls_nlp.protocol import train_calibrate_and_test

    trainer = search_trainer(tmp_path, "ls", resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    search = SearchArguments(search_hparams=True, search_grid="ls_epsilon=0.0,0.3")
    with pytest.raises(ValueError, match="`resume_from_checkpoint` continues one training"):
        train_calibrate_and_test(trainer, trainer.eval_dataset, sequence_dataset(8, seed=2), search)


def test_keep_models_must_be_a_bool(tmp_path):
    with pytest.raises(TypeError, match="`keep_models` must be True or False"):
        search_calibration_hparams(search_trainer(tmp_path, "ls"), keep_models="yes")


def test_search_without_free_hyperparameters_trains_nothing(tmp_path):
    trainer = search_trainer(tmp_path, "ce")
    calls = []
    trainer.train = lambda *a, **k: calls.append("train")  # a candidate would be trained through train()
    result = search_calibration_hparams(trainer)
    assert result.chosen == {} and result.rows == [] and result.chosen_index is None and calls == []
    assert result.summary() == {"search_candidates": 0, "search_time_s": 0}
    assert "nothing to search" in (tmp_path / "search.md").read_text()
    header = "eval_accuracy,eval_ece,eval_dce,eval_nll,eval_samples,time_s,chosen"
    assert (tmp_path / "search.csv").read_text().splitlines() == [header]


def test_search_default_rule_over_the_logged_rows(tmp_path, caplog):
    trainer = search_trainer(tmp_path, "ls")
    with caplog.at_level("WARNING", logger="mbls_nlp.hparam_search"):
        result = search_calibration_hparams(trainer, "ls_epsilon=0.0,0.3,0.6")
    rows = result.rows
    assert all(r["eval_samples"] == 32 for r in rows)  # the validation set's size
    # the rule by hand: kept when best - a <= 1.645 * sqrt((b (1 - b) + a (1 - a)) / 32); lowest dce, then NLL
    best = max(r["eval_accuracy"] for r in rows)
    kept = [
        i
        for i, r in enumerate(rows)
        if best - r["eval_accuracy"]
        <= 1.645 * ((best * (1 - best) + r["eval_accuracy"] * (1 - r["eval_accuracy"])) / 32) ** 0.5 + 1e-9
    ]
    assert result.chosen_index == min(kept, key=lambda i: (rows[i]["eval_dce"], rows[i]["eval_nll"], i))
    table = (tmp_path / "search.md").read_text()
    assert "debiased calibration error (ties: NLL)" in table and "32 validation examples" in table
    # the edge warning follows the choice: at 0.0 or 0.6 it is logged and written, at 0.3 neither
    edge = {0: "lowest", 2: "highest"}.get(result.chosen_index)
    assert result.edges == ({"ls_epsilon": edge} if edge else {})
    warned = [r.getMessage() for r in caplog.records if "grid's edge" in r.getMessage()]
    assert warned == ([edge_note(result.edges, result.chosen)] if edge else [])
    assert ("At the grid's edge" in table) == bool(edge)


def test_search_needs_model_init_and_validation(tmp_path):
    args = CalibrationConfig(output_dir=str(tmp_path), report_to="none")
    trainer = CalibrationTrainer(model=tiny_sequence_classifier(), args=args, eval_dataset=sequence_dataset(8))
    with pytest.raises(ValueError, match="model_init"):
        search_calibration_hparams(trainer)
    trainer = CalibrationTrainer(
        model_init=lambda: tiny_sequence_classifier(), args=args, train_dataset=sequence_dataset(8)
    )
    with pytest.raises(ValueError, match="eval_dataset"):
        search_calibration_hparams(trainer)


# ---- the recipe flag, on real 20 Newsgroups rows ----


@pytest.mark.slow  # five text CNN trainings through the recipe: minutes on a shared CPU
@pytest.mark.skipif(not NEWSGROUPS.is_dir(), reason=f"shared data not found at {NEWSGROUPS}")
def test_recipe_search_selects_by_the_rule_and_tests_once(tmp_path, monkeypatch, load_script):
    recipe = load_script("recipes/text_classification.py")

    predictions = []  # metric_key_prefix of every predict call: test data must be predicted exactly once
    predict = CalibrationTrainer.predict

    def recording_predict(self, dataset, *args, metric_key_prefix="test", **kwargs):
        predictions.append((metric_key_prefix, len(dataset)))
        return predict(self, dataset, *args, metric_key_prefix=metric_key_prefix, **kwargs)

    monkeypatch.setattr(CalibrationTrainer, "predict", recording_predict)
    results = recipe.main(
        [
            f"--train_file={NEWSGROUPS / 'train.jsonl.gz'}",
            f"--test_file={NEWSGROUPS / 'test.jsonl.gz'}",
            "--newsgroups_cleanup=headers",
            "--max_train_samples=300",
            "--max_eval_samples=100",
            "--max_test_samples=60",
            "--max_seq_length=64",
            "--embedding_dim=16",
            "--vocab_size=2000",
            "--num_train_epochs=2",
            "--learning_rate=0.005",
            "--per_device_train_batch_size=16",
            "--seed=0",
            "--save_strategy=no",
            "--disable_tqdm=true",
            "--save_reliability_diagrams=false",
            f"--output_dir={tmp_path}",
            "--search_hparams",
            "--search_grid=margin=0,10;alpha=0.1,1",
            "--max_accuracy_drop=2",
            "--selection_metric=ece",
        ]
    )
    # validation once (the temperature's fit), test once; the chosen candidate is the search's model, not retrained
    assert predictions == [("validation", 100), ("test", 60)]

    with open(tmp_path / "search.csv") as handle:
        rows = [{k: float(v) if k != "chosen" else v == "True" for k, v in r.items()} for r in csv.DictReader(handle)]
    assert [(r["margin"], r["alpha"]) for r in rows] == [(m, a) for m in (0, 10) for a in (0.1, 1)]
    # The rule by hand over the logged validation metrics.
    best = max(r["eval_accuracy"] for r in rows)
    eligible = [i for i, r in enumerate(rows) if r["eval_accuracy"] >= best - 0.02 - 1e-9]
    expected = min(eligible, key=lambda i: (rows[i]["eval_ece"], i))
    assert [r["chosen"] for r in rows] == [i == expected for i in range(len(rows))]
    assert rows[expected]["eval_accuracy"] >= best - 0.02 - 1e-9
    saved = json.loads((tmp_path / "all_results.json").read_text())
    assert (saved["search_margin"], saved["search_alpha"]) == (rows[expected]["margin"], rows[expected]["alpha"])
    assert saved["search_candidates"] == 4
    assert not (tmp_path / "search_models").exists()  # the candidates' stored models are gone once one is chosen
    assert results["validation_ece"] == pytest.approx(rows[expected]["eval_ece"], abs=1e-6)
    for key in ("test_accuracy", "test_ece", "test_ts_ece", "temperature"):
        assert key in saved


def test_search_without_optuna_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'mbls-nlp\[search\]'"):
        search_calibration_hparams(search_trainer(tmp_path, "ls"))


def test_compare_losses_table_lists_the_chosen_values_and_the_search_cost(tmp_path, load_script):
    compare_losses = load_script("recipes/compare_losses.py")
    metrics = {f"test_{p}{m}": 0.5 for p in ("", "ts_") for m in ("accuracy", "ece", "aece", "cece", "nll", "brier")}
    rows = {
        "ce": {**metrics, "search_candidates": 0, "search_time_s": 0},
        "mbls": {
            **metrics,
            "search_margin": 4.0,
            "search_alpha": 0.5,
            "search_candidates": 18,
            "search_time_s": 900.4,
        },
    }
    md_path, csv_path = compare_losses.write_tables(tmp_path, rows)
    lines = md_path.read_text().splitlines()
    assert lines[0].endswith("| chosen on validation | candidates | search time (s) |")
    assert lines[2].endswith("| (none) | 0 | 0 |")
    assert lines[3].endswith("| margin=4, alpha=0.5 | 18 | 900 |")
    assert csv_path.read_text().splitlines()[2].endswith('"margin=4, alpha=0.5",18,900')


def test_the_protocol_tests_the_kept_candidate_without_a_second_training(tmp_path, monkeypatch):
    from mbls_nlp.protocol import train_calibrate_and_test

    trainings = count_trainings(monkeypatch)
    trainer = search_trainer(tmp_path, "ls", eval_strategy="epoch", logging_strategy="epoch")
    search = SearchArguments(search_hparams=True, search_grid="ls_epsilon=0.0,0.3", max_accuracy_drop=100.0,
                             selection_metric="ece")  # fmt: skip
    output = train_calibrate_and_test(trainer, trainer.eval_dataset, sequence_dataset(20, seed=2), search)
    assert len(trainings) == 2 and all(trial is not None for trial in trainings)  # the candidates only
    results = output.metrics
    rows = list(csv.DictReader(open(tmp_path / "search.csv")))
    chosen = next(row for row in rows if row["chosen"] == "True")
    assert results["search_ls_epsilon"] == float(chosen["ls_epsilon"]) and results["search_candidates"] == 2
    # validation is the search's eval set: the final model's validation numbers are the chosen candidate's
    assert results["validation_ece"] == pytest.approx(float(chosen["eval_ece"]), abs=1e-9)
    assert results["validation_accuracy"] == float(chosen["eval_accuracy"])
    assert results["train_loss"] > 0 and results["epoch"] == 2.0
    state = json.loads((tmp_path / "trainer_state.json").read_text())  # the chosen candidate's per-epoch history
    assert [e["epoch"] for e in state["log_history"] if "eval_ece" in e] == [1.0, 2.0]
    # the saved model is the kept one: its test logits reloaded from disk equal the protocol's test predictions
    from transformers import AutoModelForSequenceClassification

    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    batch = sequence_dataset(20, seed=2)
    with torch.no_grad():
        logits = saved(input_ids=torch.tensor(batch["input_ids"])).logits
    expected = torch.tensor(output.test_predictions.predictions) / trainer.temperature
    assert torch.allclose(logits, expected, atol=1e-5)
