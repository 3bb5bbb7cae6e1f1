"""The one cause -> remedy table: every cause has an entry, every entry names real remedies."""
from graddoctor.diagnose.findings import CAUSES
from graddoctor.diagnose.table import TABLE, remedies_for
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
