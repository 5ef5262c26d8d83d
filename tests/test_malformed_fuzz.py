"""Malformed records (issue 19, items 1-5): none that should never train is kept, no good record is lost
or swallowed, each source's "records in" is what a person counts, and nothing crashes. The families and
their expected outcomes are in tests/malformed_fuzz.py."""

import malformed_fuzz


def test_no_malformed_record_trains_and_every_good_record_does():
    counts = malformed_fuzz.run()
    assert counts.tried > 80
    assert (counts.poison_kept, counts.good_lost, counts.swallowed, counts.miscounted, counts.crashes) == (
        0, 0, 0, 0, 0), "\n".join(counts.problems)
