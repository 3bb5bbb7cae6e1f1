"""The one cause -> remedy table: every cause has an entry, every entry names real remedies."""
import math

from graddoctor.diagnose.findings import CAUSES, Cause
from graddoctor.diagnose.table import TABLE, remedies_for, remedies_of
from graddoctor.remedies import REMEDIES
from graddoctor.remedies.registry import FAMILIES, expand


def test_every_cause_has_an_entry_and_no_entry_is_unknown():
    assert set(TABLE) == set(CAUSES)


def test_every_remedy_in_the_table_is_a_real_remedy_or_family():
    for cause, entry in TABLE.items():
        assert entry.meaning, cause
        for name in entry.remedies:
            assert name in REMEDIES or name in FAMILIES, (cause, name)
            assert expand(name), (cause, name)


def test_remedies_for_keeps_the_causes_order_without_repeats():
    class C:
        def __init__(self, name):
            self.name = name

    got = remedies_for([C("learning_rate_too_high"), C("init_too_large")])
    assert got[:3] == ("tune_optimizer(lr/10)", "tune_optimizer(lr/100)", "clip_gradients")
    assert got.count("clip_gradients") == 1 and "reinit" in got


def test_the_learning_rate_cut_nearest_the_measured_step_size_comes_first():
    """update/weight 0.09 is ~1.95 decades above the typical 1e-3: lr/100 first; 0.02 (1.3): lr/10."""
    def first_cuts(**evidence):
        got = remedies_of(Cause("learning_rate_too_high", "", evidence))
        assert sorted(got) == sorted(TABLE["learning_rate_too_high"].remedies)  # the same remedies
        return [r for r in got if r.startswith("tune_optimizer(lr/")]

    assert first_cuts(update_ratio_p90=0.09) == ["tune_optimizer(lr/100)", "tune_optimizer(lr/10)"]
    assert first_cuts(update_ratio_p90=0.02) == ["tune_optimizer(lr/10)", "tune_optimizer(lr/100)"]
    for unknown in ({}, {"update_ratio_p90": math.nan}, {"update_ratio_p90": 0.0}):  # the table's order
        assert first_cuts(**unknown) == ["tune_optimizer(lr/10)", "tune_optimizer(lr/100)"]
    assert remedies_of(Cause("init_too_large", "", {"update_ratio_p90": 0.09})) == TABLE["init_too_large"].remedies
