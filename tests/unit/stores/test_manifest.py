"""Manifests and output directories: finished, resumable, or refused."""

from __future__ import annotations

import json

import pytest

from thresher.exceptions import ArtifactError
from thresher.stores.atomic import atomic_path
from thresher.stores.manifest import PARTIAL_NAME, prepare_output_dir, read_manifest, write_manifest


def test_new_then_resume_then_complete(tmp_path):
    out = tmp_path / "art"
    assert prepare_output_dir(out, "embeddings", "fp1") == "new"
    assert json.loads((out / PARTIAL_NAME).read_text())["fingerprint"] == "fp1"
    assert prepare_output_dir(out, "embeddings", "fp1") == "resume"
    write_manifest(out, "embeddings", fingerprint="fp1", body={"dim": 3}, shards=[])
    assert not (out / PARTIAL_NAME).exists()
    assert prepare_output_dir(out, "embeddings", "fp1") == "complete"
    assert read_manifest(out, "embeddings")["dim"] == 3


def test_refuses_other_artifacts_and_foreign_files(tmp_path):
    out = tmp_path / "art"
    prepare_output_dir(out, "embeddings", "fp1")
    write_manifest(out, "embeddings", fingerprint="fp1", body={})
    with pytest.raises(ArtifactError, match="holds a 'embeddings' artefact, not 'index'"):
        prepare_output_dir(out, "index", "fp2")
    with pytest.raises(ArtifactError, match="other inputs"):
        prepare_output_dir(out, "embeddings", "fp2")
    assert prepare_output_dir(out, "embeddings", "fp2", overwrite=True) == "new"
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(ArtifactError, match="holds no thresher artefact"):
        prepare_output_dir(foreign, "curated", "fp")
    with pytest.raises(ArtifactError, match="did not write"):
        prepare_output_dir(foreign, "curated", "fp", overwrite=True)
    assert (foreign / "notes.txt").read_text() == "precious"


def test_partial_run_of_other_inputs_is_refused(tmp_path):
    out = tmp_path / "art"
    prepare_output_dir(out, "embeddings", "fp1")
    with pytest.raises(ArtifactError, match="partial run made from other inputs"):
        prepare_output_dir(out, "embeddings", "fp2")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and len(list(tmp_path.iterdir())) == 1


def test_unreadable_manifest_is_named(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json"):
        read_manifest(tmp_path)
