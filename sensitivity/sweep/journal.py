"""Each entry's search as an Optuna study in ``optuna.journal`` beside the tables (Optuna's own tools read it)."""

from __future__ import annotations

import hashlib
import json
import os

from sensitivity.identity import json_ready
from sensitivity.results import resolve, write_atomic
from sensitivity.study import Study

OPTUNA_JOURNAL = "optuna.journal"  # beside the tables: one Optuna study per optimizer entry


def optuna_storage(location: str):
    """(Optuna journal storage of the results location, a function that saves it).

    Locally (or on NFS) the journal is the file beside the tables.  On a URI (s3://, gs://) Optuna
    cannot lock a file, so the driver, the only writer, works on a local copy that it downloads
    first and uploads when the run ends (a crash loses only the journal's latest points, which
    the next run adds again from the table).
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if "://" not in location:
        os.makedirs(location, exist_ok=True)
        path = os.path.join(location, OPTUNA_JOURNAL)
        # Optuna's lock file of a run killed mid-write: this run holds the study's lease, so no
        # other writer is live, and waiting for the lock to age (30 s) would only stall the resume
        for leftover in (f"{path}.lock",):
            if os.path.lexists(leftover):  # a symlink (Optuna's default lock), maybe dangling
                os.remove(leftover)
        return JournalStorage(JournalFileBackend(path)), lambda: None
    import shutil
    import tempfile

    fs, path = resolve(location)
    remote = path.rstrip("/") + "/" + OPTUNA_JOURNAL
    local = os.path.join(tempfile.mkdtemp(prefix="sensitivity-optuna-"), OPTUNA_JOURNAL)
    if fs.get_file_info(remote).type.name == "File":
        with fs.open_input_stream(remote) as src, open(local, "wb") as dst:
            dst.write(src.read())

    def save() -> None:
        with open(local, "rb") as src:
            write_atomic(fs, remote, src.read())
        shutil.rmtree(os.path.dirname(local), ignore_errors=True)  # the run is over

    return JournalStorage(JournalFileBackend(local)), save


def optuna_study_name(study: Study, index: int, smoke: bool) -> str:
    """`<label>-<hash of the entry's search plan>`: a changed entry gets a study of its own."""
    plan = study.search_plan(index, smoke)
    text = json.dumps(json_ready({"task": plan["task"], "fixed": plan["fixed"], "choices": plan["choices"],
                                  "ranges": {k: r.model_dump() for k, r in plan["ranges"].items()},
                                  "optimizer": plan["entry"].name, "seeds": study.seeds(smoke),
                                  "metric": study.search.metric}), sort_keys=True)
    return f"{study.label(index)}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def known_points(storage, name: str) -> list[dict]:
    """Params of the entry's COMPLETE Optuna trials; trials an interrupted run left RUNNING become FAIL."""
    import optuna
    from optuna.trial import TrialState

    try:
        ot_study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return []
    known = []
    for trial in ot_study.get_trials(deepcopy=False):
        if trial.state == TrialState.RUNNING:
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        elif trial.state == TrialState.COMPLETE:
            known.append(dict(trial.params))
    return known
