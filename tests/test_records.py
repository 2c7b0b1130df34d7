"""records.read_json_object: the lenient reader of the JSON records a stage leaves in its folder
(predict.json, dataset.json, timings.json)."""

from glioseg.records import read_json_object


def test_an_object_is_read_anything_else_is_none(tmp_path):
    path = tmp_path / "record.json"
    assert read_json_object(path) is None  # missing
    path.write_text('{"predicted": ["a"], "options": {"scheme": "brats2023"}}')
    assert read_json_object(path) == {"predicted": ["a"], "options": {"scheme": "brats2023"}}
    path.write_text('["a", "b"]')  # JSON, but not an object
    assert read_json_object(path) is None
    path.write_text('{"predicted": [')  # torn
    assert read_json_object(path) is None
    path.write_bytes(b"\xff\xfe{}")  # not text
    assert read_json_object(path) is None
    assert read_json_object(tmp_path) is None  # a folder
