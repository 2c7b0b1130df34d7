"""bench/fault_table.py: a fault's outcome and the table of faults."""

from glioseg.bench import fault_table as FT


def test_outcome_of_a_fault():
    r = FT.FaultResult("train", "write", killed=True, rerun_rc=0)
    assert r.outcome == FT.IDENTICAL and r.ok
    assert "not killed" in FT.FaultResult("train", "write").outcome
    assert "half-written" in FT.FaultResult("t", "w", killed=True, half_written=["x"]).outcome
    assert "exit 1" in FT.FaultResult("t", "w", killed=True, rerun_rc=1).outcome
    r.differences = ["last.pt model.w: max abs diff 1e-07"]
    assert r.outcome == "recovered, differs (1 difference(s))" and not r.ok
    table = FT.format_table([r])
    assert "train" in table and "recovered, differs" in table
