"""Matching archive members into triplets; every orphan and duplicate reported."""
from __future__ import annotations

from lib.dataset import match_triplets


def _reasons(matching):
    return {r.name: r.reason.value for r in matching.rejections}


def test_complete_triplets_in_folders_with_captions():
    matching = match_triplets(["a/one_start.MP4", "a/one_end.mov", "b/one_mask.PNG", "one.txt",
                               "two_start.webm", "two_end.mkv", "two_mask.avi"])
    rows = matching.manifest.to_dict("records")
    assert [r["name"] for r in rows] == ["one", "two"]
    assert rows[0]["mask"] == "b/one_mask.PNG" and rows[0]["caption"] == "one.txt"
    assert not matching.rejections


def test_missing_parts_are_rejected_with_reason():
    matching = match_triplets(["a_start.mp4", "a_mask.png", "b_end.mp4", "b_mask.png",
                               "c_start.mp4", "c_end.mp4"])
    assert _reasons(matching) == {"a": "missing_end", "b": "missing_start", "c": "missing_mask"}
    assert matching.manifest.empty
    assert "b_start" in next(r.message for r in matching.rejections if r.name == "b")


def test_duplicate_file_names_anywhere_are_refused():
    matching = match_triplets(["x/a_start.mp4", "y/a_start.mp4", "a_end.mp4", "a_mask.png",
                               "b_start.mp4", "b_start.mov", "b_end.mp4", "b_mask.png"])
    assert _reasons(matching) == {"a": "duplicate_name", "b": "duplicate_name"}


def test_names_are_case_sensitive_and_orphans_reported():
    matching = match_triplets(["Clip_start.mp4", "clip_end.mp4", "clip_mask.png", "lonely.txt",
                               "notes.md", "clip_START.mp4"])
    assert _reasons(matching) == {"Clip": "missing_end", "clip": "missing_start"}
    assert any("lonely.txt" in w for w in matching.warnings)
    assert any("notes.md" in w for w in matching.warnings)
    assert any("clip_START.mp4" in w for w in matching.warnings)


def test_mask_may_not_be_audio_or_text():
    matching = match_triplets(["a_start.mp4", "a_end.mp4", "a_mask.wav"])
    assert _reasons(matching) == {"a": "missing_mask"}
