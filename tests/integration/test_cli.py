"""The command line: every subcommand has --help, the main path works, and user errors exit 2 with a message."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from thresher.cli import main
from thresher.stores import open_embedding_store, open_index


@pytest.mark.parametrize("command", [[], ["embed"], ["index"], ["inspect"], ["demo"], ["select"], ["select", "rds"], ["select", "smote"], ["select", "batches"], ["plan"], ["plan", "infobatch"], ["plan", "infobatch-init"]])
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_embed_index_inspect(text_pool, tmp_path):
    runner = CliRunner()
    emb, idx = tmp_path / "emb", tmp_path / "idx"
    result = runner.invoke(main, ["embed", "--pool", str(text_pool), "--text", "{instruction}\\n\\n{response}", "--id-column", "uid",
                                  "--out", str(emb), "--local", "--quiet", "--partition-rows", "30"])
    assert result.exit_code == 0, result.output
    assert "embedded 90 rows" in result.output
    store = open_embedding_store(emb)
    assert store.manifest["text"]["template"] == "{instruction}\n\n{response}"  # \n unescaped

    result = runner.invoke(main, ["index", "--embeddings", str(emb), "--out", str(idx)])
    assert result.exit_code == 0, result.output
    index = open_index(idx)
    scores, ids = index.search(store.take([5]), 1)
    assert ids[0, 0] == store.ids()[5] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)

    result = runner.invoke(main, ["inspect", str(emb), "--verify"])
    assert result.exit_code == 0, result.output
    assert "embeddings artefact" in result.output and "dim 384" in result.output and "3 shard checksums match" in result.output
    assert store.ids()[0] in result.output
    result = runner.invoke(main, ["inspect", str(idx)])
    assert "Flat" in result.output and "recall@10" in result.output
    result = runner.invoke(main, ["inspect", str(emb), "--json"])
    assert json.loads(result.output)["n_rows"] == 90
    result = runner.invoke(main, ["inspect", str(emb / "part-00001.arrow")])
    assert "30 rows" in result.output


def test_user_errors_exit_2_with_message(text_pool, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["embed", "--pool", str(text_pool), "--text", "{nope}", "--out", str(tmp_path / "e"), "--local", "--quiet"])
    assert result.exit_code == 2 and "'nope'" in result.output and "pool.jsonl" in result.output
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "part-00000.arrow").write_bytes(b"")
    (tmp_path / "half" / ".thresher-partial.json").write_text(json.dumps({"artifact": "embeddings", "fingerprint": "x"}))
    result = runner.invoke(main, ["inspect", str(tmp_path / "half")])
    assert result.exit_code == 2 and "no manifest.json" in result.output and "interrupted" in result.output
    result = runner.invoke(main, ["index", "--embeddings", str(tmp_path / "half"), "--out", str(tmp_path / "i")])
    assert result.exit_code == 2 and "not a finished thresher artefact" in result.output
    assert np.all([not (tmp_path / "i" / "manifest.json").exists()])
