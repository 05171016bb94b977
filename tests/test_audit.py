"""`facejob audit`: the attacks do what they claim on real LFW pairs, the adversarial images are
valid, the transfer case runs through the real indexing pipeline, and a seed reproduces a run."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from facejob.audit import AuditConfig, AuditError, FaceRef, Pair
from facejob.audit.pairs import lfw_pairs
from facejob.io.lfw_pairs import read_lfw_pairs

SAME = ("Abdullah_Gul/Abdullah_Gul_0013.jpg", "Abdullah_Gul/Abdullah_Gul_0014.jpg")
DIFFERENT = ("AJ_Lamas/AJ_Lamas_0001.jpg", "Zach_Safrin/Zach_Safrin_0001.jpg")
SMALL = AuditConfig(pgd_steps=2, pgd_step=0.5, device="cpu", seed=7)


def _pairs(data_dir) -> list[Pair]:
    root = data_dir / "lfw" / "images"
    return [Pair(FaceRef(str(root / a)), FaceRef(str(root / b)), same) for (a, b), same in ((SAME, True), (DIFFERENT, False))]


@pytest.fixture(scope="module")
def audit(data_dir):
    """The audit's models and the faces of one same-person and one different-person LFW pair."""
    from facejob.audit.run import _Audit
    from facejob.config import DEFAULT_MAX_PIXELS, ModelConfig

    au = _Audit(SMALL, ModelConfig(embedder="torch", device="cpu"), DEFAULT_MAX_PIXELS)
    return au, au.faces(_pairs(data_dir))


def _target(au, ref_chip):
    import torch

    return torch.from_numpy(au.defended.plain.embed(ref_chip[None]))


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_attacks_move_the_distance_their_way_within_eps(audit, method):
    from facejob.audit.attacks import AttackParams

    au, faces = audit
    for (pair, probe, ref), goal in zip(faces, ("dodging", "impersonation")):
        assert pair.same == (goal == "dodging")
        target = _target(au, ref.chip)
        before = np.linalg.norm(au.defended.plain.embed(probe.chip[None]) - target.numpy())
        for eps in (2, 4):
            p = AttackParams(method, eps, steps=2, step=0.5)
            adv = au.attack_chips(probe.chip[None], target, goal, p, seed=1)
            assert adv.dtype == np.uint8 and adv.shape == (1, 150, 150, 3)
            change = np.abs(adv[0].astype(int) - probe.chip)
            assert change.max() <= eps and change.max() >= 1
            after = np.linalg.norm(au.defended.plain.embed(adv) - target.numpy())
            # on these pairs eps 2 is already worth more than 0.1 of distance either way
            assert (after > before + 0.1) if goal == "dodging" else (after < before - 0.1), (method, goal, eps)
        p = AttackParams(method, 0.9)   # below one grey level a uint8 image cannot change
        assert np.array_equal(au.attack_chips(probe.chip[None], target, goal, p, seed=1)[0], probe.chip)


def test_photo_warp_reproduces_dlibs_chip(audit, data_dir, tmp_path):
    """The transfer attack's differentiable chip sampling gives the pipeline's chip (up to dlib's
    truncation to uint8), also for a big face that dlib shrinks through its image pyramid."""
    from PIL import Image

    from facejob.audit.attacks import PhotoWarp, photo_crop, to_tensor, to_uint8
    from facejob.audit.faces import load_face

    au, faces = audit
    img = Image.open(data_dir / "labelled/fr_knn/train/obama/obama.jpg").convert("RGB")
    img.resize((img.width * 2, img.height * 2), Image.Resampling.BILINEAR).save(tmp_path / "big.png")
    big = load_face(au.model, FaceRef(str(tmp_path / "big.png")))
    for face in [f for _, f, _ in faces] + [big]:
        crop = photo_crop(face.image, face.landmarks)
        warp = PhotoWarp(au.net, [crop], au.device)
        chip = warp.chips(warp.padded([crop]))
        diff = chip[0].permute(1, 2, 0).numpy() - face.chip
        # dlib truncates to integers after sampling and after each pyramid level; the warp does not
        assert -0.01 < diff.min() and diff.max() < crop.level + 2.01
    assert photo_crop(big.image, big.landmarks).level >= 0
    assert to_uint8(to_tensor(big.chip[None], au.device))[0].tobytes() == big.chip.tobytes()


def test_transfer_runs_the_real_pipeline_on_the_perturbed_photo(audit):
    """The perturbed photo is re-detected and re-aligned by the pipeline's own detector and
    landmark model: they are seen receiving the perturbed pixels."""
    from facejob.audit.attacks import AttackParams

    au, faces = audit
    pair, probe, ref = faces[0]
    target = _target(au, ref.chip)
    photo, = au.attack_photos([probe], target, "dodging", AttackParams("pgd", 4, steps=2, step=0.5), seed=1)
    assert photo.dtype == np.uint8 and photo.shape == probe.image.shape
    change = np.abs(photo.astype(int) - probe.image)
    assert 1 <= change.max() <= 4
    seen = []
    real_detect, real_landmarks = au.model.detector.detect, au.model.aligner.landmarks

    def detect(images, upsample):
        seen.append(("detect", images[0].copy()))
        return real_detect(images, upsample)

    def landmarks(image, boxes):
        seen.append(("landmarks", image.copy()))
        return real_landmarks(image, boxes)

    au.model.detector.detect, au.model.aligner.landmarks = detect, landmarks
    try:
        found = au.through_pipeline([photo], [probe])
    finally:
        au.model.detector.detect, au.model.aligner.landmarks = real_detect, real_landmarks
    assert [k for k, _ in seen] == ["detect", "landmarks"]
    assert all(np.array_equal(img, photo) for _, img in seen)
    before = np.linalg.norm(probe.embedding - ref.embedding)
    after = np.linalg.norm(found[0] - ref.embedding)
    assert after > before + 0.05
    assert found.shape == (1, 128) and not np.isnan(found).any()


def test_run_is_reproducible_with_a_seed(data_dir):
    from facejob.audit.run import run_audit

    cfg = replace(SMALL, attacks=("pgd",), eps=(0, 2), defences=("none", "jitter"))
    first = run_audit(_pairs(data_dir), cfg)
    again = run_audit(_pairs(data_dir), cfg)
    assert first == again
    assert [(r.goal, r.eps, r.defence) for r in first] == [
        (g, e, d) for e in (0, 2) for g in ("dodging", "impersonation") for d in ("none", "jitter")]
    for r in first:
        assert r.pairs == 1
        if r.eps == 0:   # no attack: the clean decision, distances unchanged
            assert r.mean_distance_after == r.mean_distance_before and r.success_rate == 0.0


def test_the_command_prints_json_records(data_dir, tmp_path, capsys):
    from facejob.cli import main

    lfw = data_dir / "lfw"
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\n" + "\t".join(["Abdullah_Gul", "13", "14"]) + "\n"
                     + "\t".join(["AJ_Lamas", "1", "Zach_Safrin", "1"]) + "\n")
    args = ["audit", "--pairs", str(pairs), "--images", str(lfw / "images"), "--attack", "fgsm", "--eps", "0,2",
            "--defence", "none,jpeg,flip,transfer", "--device", "cpu", "--examples", str(tmp_path / "ex")]
    assert main(args + ["--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 2 * 2 * 4
    keys = {"attack", "goal", "eps", "defence", "pairs", "success_rate", "mean_distance_before", "mean_distance_after"}
    assert all(keys <= set(r) for r in records)
    for r in records:
        assert r["attack"] == "fgsm" and r["pairs"] == 1 and 0 <= r["success_rate"] <= 1
    transfer = {r["goal"]: r for r in records if r["defence"] == "transfer" and r["eps"] == 2}
    assert transfer["dodging"]["mean_distance_after"] > transfer["dodging"]["mean_distance_before"]
    assert transfer["impersonation"]["mean_distance_after"] < transfer["impersonation"]["mean_distance_before"]
    shown = json.loads((tmp_path / "ex" / "examples.json").read_text())
    assert len(shown) == 2 and all((tmp_path / "ex" / e["chip"]).is_file() and (tmp_path / "ex" / e["photo"]).is_file()
                                   for e in shown)


def test_bad_requests_fail_clearly(tmp_path, capsys):
    from facejob.cli import main

    assert main(["audit"]) == 2
    assert "give an index OUT, or --pairs FILE --images DIR" in capsys.readouterr().err
    assert main(["audit", "--pairs", "p.txt", "--images", str(tmp_path), "--attack", "cw"]) == 2
    assert "attacks must be among" in capsys.readouterr().err
    with pytest.raises(AuditError, match="eps must be"):
        AuditConfig(eps=(-1,))


def test_lfw_pairs_file(data_dir, tmp_path):
    lfw = data_dir / "lfw"
    pairs = read_lfw_pairs(lfw / "pairsDevTest.txt")
    assert len(pairs) == 1000 and sum(s for *_, s in pairs) == 500
    assert pairs[0] == ("Abdullah_Gul/Abdullah_Gul_0013.jpg", "Abdullah_Gul/Abdullah_Gul_0014.jpg", True)
    some = lfw_pairs(lfw / "pairsDevTest.txt", lfw / "images", limit=3)
    assert [p.same for p in some] == [True] * 3 + [False] * 3
    assert all((lfw / "images").joinpath(p.probe.uri).is_file() for p in some)
    bad = tmp_path / "bad.txt"
    bad.write_text("1\nonly two\n")
    with pytest.raises(ValueError, match="not an LFW pair line"):
        read_lfw_pairs(bad)


def test_pairs_from_an_index_by_cluster(tmp_path, data_dir, capsys):
    """`facejob audit OUT` samples pairs from an index's clusters and attacks them."""
    from facejob.cli import main
    from facejob.audit.pairs import index_pairs
    from tests.test_reduce_data import make_out, person, photos

    out = tmp_path / "out"
    johns = photos(data_dir, ("labelled/dlib_johns",))
    make_out(out, [p for p in johns if sum(person(str(q)) == person(str(p)) for q in johns[:johns.index(p)]) < 4])
    with pytest.raises(Exception, match="facejob reduce"):
        index_pairs(str(out), 3)
    assert main(["cluster", str(out)]) == 0
    pairs = index_pairs(str(out), 3, seed=1)
    assert pairs == index_pairs(str(out), 3, seed=1)
    assert [p.same for p in pairs] == [True] * 3 + [False] * 3
    assert all(p.probe.box is not None for p in pairs)
    assert sum(person(p.probe.uri) == person(p.reference.uri) for p in pairs[:3]) >= 2   # clusters ≈ people
    capsys.readouterr()
    assert main(["audit", str(out), "--limit", "1", "--attack", "fgsm", "--eps", "0,2", "--defence", "none,transfer",
                 "--device", "cpu", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {(r["goal"], r["pairs"]) for r in records} == {("dodging", 1), ("impersonation", 1)}
