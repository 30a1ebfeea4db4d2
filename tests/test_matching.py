"""Matching archive members into triplets; every orphan and duplicate reported."""

from __future__ import annotations

from lib.ingest.dataset import match_triplets


def _reasons(matching):
    return {r.name: r.reason.value for r in matching.rejections}


def test_complete_triplets_in_folders_with_captions():
    matching = match_triplets(
        [
            "a/one_start.MP4",
            "a/one_end.mov",
            "b/one_mask.PNG",
            "one.txt",
            "two_start.webm",
            "two_end.mkv",
            "two_mask.avi",
        ]
    )
    rows = [row.model_dump() for row in matching.manifest]
    assert [r["name"] for r in rows] == ["one", "two"]
    assert rows[0]["mask"] == "b/one_mask.PNG" and rows[0]["caption"] == "one.txt"
    assert not matching.rejections


def test_missing_parts_are_rejected_with_reason():
    matching = match_triplets(["a_start.mp4", "a_mask.png", "b_end.mp4", "b_mask.png", "c_start.mp4", "c_end.mp4"])
    assert _reasons(matching) == {"a": "missing_end", "b": "missing_start", "c": "missing_mask"}
    assert matching.manifest == []
    assert "b_start" in next(r.message for r in matching.rejections if r.name == "b")


def test_duplicate_file_names_anywhere_are_refused():
    matching = match_triplets(
        [
            "x/a_start.mp4",
            "y/a_start.mp4",
            "a_end.mp4",
            "a_mask.png",
            "b_start.mp4",
            "b_start.mov",
            "b_end.mp4",
            "b_mask.png",
        ]
    )
    assert _reasons(matching) == {"a": "duplicate_name", "b": "duplicate_name"}


def test_names_are_case_sensitive_and_orphans_reported():
    matching = match_triplets(
        ["Clip_start.mp4", "clip_end.mp4", "clip_mask.png", "lonely.txt", "notes.md", "clip_START.mp4"]
    )
    assert _reasons(matching) == {"Clip": "missing_end", "clip": "missing_start"}
    assert any("lonely.txt" in w for w in matching.warnings)
    assert any("notes.md" in w for w in matching.warnings)
    assert any("clip_START.mp4" in w for w in matching.warnings)


def test_mask_may_not_be_audio_or_text():
    matching = match_triplets(["a_start.mp4", "a_end.mp4", "a_mask.wav"])
    assert _reasons(matching) == {"a": "unsupported_extension"}  # the file is there, its format is not
    assert "a_mask.wav" in matching.rejections[0].message


def test_avchd_clips_are_accepted_and_decode(tmp_path):
    """Camcorder .mts/.m2ts files (MPEG transport streams) are videos like any other."""
    import av

    from lib.ingest.conform import check_triplet
    from lib.ingest.dataset import triplets_from_manifest
    from lib.media.synthetic import make_box_mask, make_clip

    def as_transport_stream(source, destination):
        with av.open(str(source)) as inp, av.open(str(destination), "w", format="mpegts") as out:
            streams = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
            for packet in inp.demux():
                if packet.dts is not None and packet.stream.index in streams:
                    packet.stream = streams[packet.stream.index]
                    out.mux(packet)
        return destination

    as_transport_stream(make_clip(tmp_path / "a.mp4", 1.0, seed=1), tmp_path / "cam_start.MTS")
    as_transport_stream(make_clip(tmp_path / "b.mp4", 1.0, seed=2), tmp_path / "cam_end.m2ts")
    make_box_mask(tmp_path / "cam_mask.png", (320, 180), (0.3, 0.3, 0.7, 0.7))
    matching = match_triplets(["cam_start.MTS", "cam_end.m2ts", "cam_mask.png"])
    assert matching.rejections == [] and [row.name for row in matching.manifest] == ["cam"]
    check = check_triplet(triplets_from_manifest(matching.manifest, tmp_path)[0])
    assert check.reason is None, check.message
    assert check.target.duration_s > 0.9


def test_unsupported_extension_is_reported_as_such():
    matching = match_triplets(["clip_start.flv", "clip_end.mp4", "clip_mask.png", "lone_mask.tiff"])
    reasons = {r.name: (r.reason.value, r.message) for r in matching.rejections}
    assert reasons["clip"][0] == "unsupported_extension"
    assert "clip_start.flv" in reasons["clip"][1] and ".mts" in reasons["clip"][1] and ".mp4" in reasons["clip"][1]
    assert reasons["lone"][0] == "unsupported_extension" and "lone_mask.tiff" in reasons["lone"][1]
    assert "missing_start" not in {reason for reason, _ in reasons.values()}
