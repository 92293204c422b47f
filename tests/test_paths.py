"""Where results go: --out and --storage are checked before Ray starts; a URI's query stays a query.

Budget: about a second; no Ray.
"""

from __future__ import annotations

import os

import pytest
import yaml

from sensitivity.cli import main
from sensitivity.results import ResultsStore, join
from sensitivity.study import StudyError
from sensitivity.sweep.driver import results_root

STUDY = {"name": "s", "task": {"dataset": "digits", "model": "mlp", "epochs": 1},
         "optimizers": [{"name": "sgd", "lr": 0.1}]}


def test_out_with_a_uri_exits_2_and_says_to_use_storage(tmp_path, monkeypatch, capsys):
    from sensitivity.sweep import driver

    started = []
    monkeypatch.setattr(driver, "connect", lambda *a, **k: started.append(1))  # Ray may be up for other tests
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    assert main(["run", str(path), "--out", "s3://bucket/x", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--storage s3://bucket/x" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s3:").exists() and not started


def test_the_study_name_goes_into_the_path_never_the_query():
    assert join("s3://bucket/p?region=eu-west-1", "study") == "s3://bucket/p/study?region=eu-west-1"
    assert join("s3://bucket/p/?region=x&a=b", "study", "ray") == "s3://bucket/p/study/ray?region=x&a=b"
    assert join("gs://bucket", "study") == "gs://bucket/study"


def test_a_uri_with_a_query_stores_under_its_path(tmp_path):
    location = join(results_root("results", f"file://{tmp_path}/p?unused=1"), "study")
    store = ResultsStore(location)
    store.append([{"trial_id": "a", "status": "ok"}], [{"trial_id": "a", "epoch": 1}])
    store.compact()
    assert (tmp_path / "p" / "study" / "trials.parquet").is_file()
    assert ResultsStore(location).done_ids() == {"a"}


def test_relative_storage_is_made_absolute_and_out_uris_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert results_root("results", "shared/runs") == os.path.join(str(tmp_path), "shared", "runs")
    assert results_root("results", None) == os.path.join(str(tmp_path), "results")
    assert results_root("results", "s3://b/p?region=x") == "s3://b/p?region=x"
    with pytest.raises(StudyError, match=r"^out: gs://b/x is a URI.*--storage gs://b/x"):
        results_root("gs://b/x", None)


def test_credentials_in_a_uri_are_refused_and_never_printed(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    for uri in ("s3://AKID:SECRETX@bucket/x?region=eu-west-1", "s3://AKID:QZX/QZY@bucket/x?region=eu-west-1"):
        for argv in (["run", str(path), "--storage", uri, "--quiet"], ["compact", uri], ["plot", uri]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert "carries credentials" in err and "s3://bucket/x" in err and len(err.strip().splitlines()) == 1, err
            assert "QZ" not in err and "SECRETX" not in err and "AKID" not in err, err


def test_a_corrupt_table_under_a_uri_is_named_by_its_uri(s3, tmp_path):
    from sensitivity.storage import CorruptTableError

    location = s3.uri(f"{tmp_path.name}/s")
    with s3.fs.open_output_stream(s3.key(f"{tmp_path.name}/s/curves.parquet")) as handle:
        handle.write(b"garbage")
    with pytest.raises(CorruptTableError) as info:
        ResultsStore(location).check()
    assert join(location, "curves.parquet") in str(info.value)  # s3://bucket/.../curves.parquet?endpoint_override=
