"""report/blocks.py: JSON and CSV values as table blocks; a folder's Markdown pushed under its
section."""

from __future__ import annotations

from glioseg.report.blocks import MAX_ROWS, demote_headings, fmt, json_blocks, kv_table


def test_fmt_shortens_values() -> None:
    assert fmt(0.123456789) == "0.1235" and fmt(3) == "3" and fmt(True) == "True"
    assert fmt(None) == "None" and fmt([1, 2.5, "a"]) == "1, 2.5, a"
    assert fmt(list(range(13))) == "[13 values]"
    assert fmt("0.123456789") == "0.1235"  # a long decimal read from a CSV
    assert fmt("0.70") == "0.70" and fmt("BraTS2021_00000") == "BraTS2021_00000"
    assert fmt({"a": 1}) == '{"a": 1}'


def test_json_blocks_shapes() -> None:
    # a list of records: one table, flattened columns, at most MAX_ROWS rows
    (table,) = json_blocks([{"n": i, "dice": {"WT": i / 10}} for i in range(MAX_ROWS + 5)], "t")
    assert table.title == "t" and table.data["header"] == ["n", "dice.WT"]
    assert len(table.data["rows"]) == MAX_ROWS and table.data["note"] == (
        f"first {MAX_ROWS} of {MAX_ROWS + 5} rows")
    # region -> metric -> value: a matrix table
    (matrix,) = json_blocks({"WT": {"dice": 0.8}, "TC": {"dice": 0.7, "hd95": 4.0}})
    assert matrix.data["header"] == ["", "dice", "hd95"]
    assert matrix.data["rows"] == [["WT", "0.8", ""], ["TC", "0.7", "4"]]
    # scalars in one key/value table, the rest recursed into with its key as title
    blocks = json_blocks({"n": 3, "runs": [{"a": 1}], "one": {"x": 1}})
    assert [b.title for b in blocks] == [None, "runs", "one"]
    assert blocks[0].data["rows"] == [["n", "3"]]
    assert json_blocks(5)[0].data == kv_table({"value": 5}).data


def test_demote_headings_outside_code() -> None:
    text = "# A\n## B\n```\n# not a heading\n```\n###### F\n#no"
    assert demote_headings(text, 2) == "### A\n#### B\n```\n# not a heading\n```\n###### F\n#no"
