"""Operator feedback: the service's history in SQLite across restarts, the bounded image store, judgements that
fit the verdict or a clean 4xx, and the loop back to the model — ``feedback export`` then ``refit`` on a tiny
synthetic category whose false alarms are real test normals, the held-out ones passing after the refit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'anomalens[serve]'")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")
from fastapi.testclient import TestClient  # noqa: E402

from anomalens.cli import main  # noqa: E402
from anomalens.data import load_dataset, make_synthetic_category  # noqa: E402
from anomalens.errors import AnomalensError  # noqa: E402
from anomalens.feedback.store import FeedbackStore, Retention, default_state_dir  # noqa: E402
from anomalens.serve import create_app, load_served_model  # noqa: E402
from tests.conftest import FIT  # noqa: E402


def client(app) -> TestClient:
    return TestClient(app, base_url="http://127.0.0.1:8000")  # a name the Host check accepts


@pytest.fixture(scope="module")
def category(tmp_path_factory) -> Path:
    # 16 test normals: with 12 training images PaDiM's 0.99-quantile threshold flags a few of them (false alarms).
    return make_synthetic_category(tmp_path_factory.mktemp("data"), "brick", n_train=12, n_test_good=16,
                                   n_test_defect=4, image_size=64, seed=0)


@pytest.fixture(scope="module")
def run(category, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "brick"
    assert main(["fit", "padim", str(category), "-o", str(run), *FIT]) == 0
    return run


@pytest.fixture(scope="module")
def served(run):
    return load_served_model(run)


def labelled_test_images(category) -> list[tuple[Path, int]]:
    return [(record.source, record.label) for record in load_dataset(category).test]


def post(c: TestClient, path: Path) -> dict:
    answer = c.post(f"/predict?name={path.parent.name}-{path.name}", content=path.read_bytes(),
                    headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def folder_digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sorted(folder.iterdir()))).hexdigest()


def test_history_and_judgements_persist_across_a_restart(served, category, tmp_path):
    state = tmp_path / "state"
    images = labelled_test_images(category)
    defect = next(path for path, label in images if label == 1)
    normal = next(path for path, label in images if label == 0)
    with client(create_app(served, state_dir=state)) as c:
        first, second = post(c, defect), post(c, normal)
        flagged = first if first["anomalous"] else second
        judgement = "confirmed_defect" if flagged["anomalous"] else "missed_defect"
        assert c.post(f"/feedback/{flagged['history_id']}", json={"judgement": judgement}).status_code == 200
    with client(create_app(served, state_dir=state)) as c:  # a new service on the same state folder
        page = c.get("/history").json()
        assert [item["id"] for item in page["items"]] == [second["history_id"], first["history_id"]]
        assert page["total"] == 2 and page["judged"] == 1
        stored = next(item for item in page["items"] if item["id"] == flagged["history_id"])
        assert stored["judgement"] == judgement and stored["label"] == 1
        assert stored["score"] == pytest.approx(flagged["score"]) and stored["anomalous"] == flagged["anomalous"]
        picture = c.get(stored["image_url"])
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
        assert picture.content == (defect if flagged is first else normal).read_bytes()
        assert c.get("/history?limit=1").json()["next_before"] == second["history_id"]
        assert [i["id"] for i in c.get(f"/history?before={second['history_id']}").json()["items"]] == [first["history_id"]]


def test_judgements_that_do_not_fit_get_a_4xx_and_the_service_keeps_serving(served, category, tmp_path):
    images = labelled_test_images(category)
    with client(create_app(served, state_dir=tmp_path / "state")) as c:
        results = [post(c, path) for path, _ in images[:6]]
        passed = next(r for r in results if not r["anomalous"])
        flagged = next((r for r in results if r["anomalous"]), None)
        cases = [(passed["history_id"], {"judgement": "false_alarm"}, 400, "passed"),
                 (passed["history_id"], {"judgement": "confirmed_defect"}, 400, "missed_defect"),
                 (passed["history_id"], {"judgement": "looks fine"}, 400, "unknown judgement"),
                 (passed["history_id"], {"verdict": "ok"}, 400, "judgement"),
                 (passed["history_id"], {"judgement": 3}, 400, "string"),
                 (9999, {"judgement": "missed_defect"}, 404, "no result 9999")]
        if flagged is not None:
            cases.append((flagged["history_id"], {"judgement": "missed_defect"}, 400, "flagged"))
        for result_id, body, status, says in cases:
            answer = c.post(f"/feedback/{result_id}", json=body)
            assert answer.status_code == status, (body, answer.text)
            assert says in answer.json()["detail"] and "\n" not in answer.json()["detail"]
        assert c.post(f"/feedback/{passed['history_id']}", content=b"{not json").status_code == 400
        assert c.post("/feedback/abc", json={"judgement": "false_alarm"}).status_code == 400
        assert c.get("/history?limit=0").status_code == 400
        assert c.get("/history/9999/image").status_code == 404
        # nothing above changed a judgement, and the service still answers
        assert c.get("/history").json()["judged"] == 0
        assert c.post(f"/feedback/{passed['history_id']}", json={"judgement": "missed_defect"}).json()["label"] == 1
        assert c.post(f"/feedback/{passed['history_id']}", json={"judgement": None}).json()["judgement"] is None
        post(c, images[0][0])
    with client(create_app(served)) as c:  # no state folder: no history, a clear 404
        assert post(c, images[0][0])["history_id"] is None
        answer = c.get("/history")
        assert answer.status_code == 404 and "no history" in answer.json()["detail"]


def test_retention_removes_the_oldest_unjudged_images_first(category, tmp_path):
    data = next(path for path, _ in labelled_test_images(category)).read_bytes()
    store = FeedbackStore(tmp_path / "state", Retention(max_images=3))
    ids = [store.add(image=f"{i}.png", score=float(i), normalized_score=0.5, anomalous=True, model_id="m", data=data)
           for i in range(3)]
    store.judge(ids[0], "false_alarm")  # the oldest, but judged: kept while unjudged images can go instead
    ids += [store.add(image=f"{i}.png", score=float(i), normalized_score=0.5, anomalous=False, model_id="m", data=data)
            for i in range(3, 5)]
    kept = {item["id"] for item in store.page(10)["items"] if item["image_file"]}
    assert kept == {ids[0], ids[3], ids[4]}
    assert sorted(p.name for p in (tmp_path / "state" / "images").iterdir()) == sorted(f"{i}.png" for i in kept)
    assert store.page(10)["total"] == 5  # the rows (scores, judgements) stay
    store.close()

    by_size = FeedbackStore(tmp_path / "small", Retention(max_mb=2.5 * len(data) / 1e6))
    for i in range(4):
        by_size.add(image="x", score=0.0, normalized_score=0.1, anomalous=False, model_id="m", data=data)
    assert by_size.stats()["images_kept"] == 2 and len(list((tmp_path / "small" / "images").iterdir())) == 2
    by_age = FeedbackStore(tmp_path / "aged", Retention(max_age_days=0))  # every image is already too old
    by_age.add(image="x", score=0.0, normalized_score=0.1, anomalous=False, model_id="m", data=data)
    assert by_age.stats()["images_kept"] == 0 and not list((tmp_path / "aged" / "images").iterdir())


def test_a_folder_that_is_not_a_state_folder_is_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine\n")
    with pytest.raises(AnomalensError, match="not an anomalens state folder"):
        FeedbackStore(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine\n"
    assert main(["feedback", "export", str(tmp_path / "mine"), str(tmp_path / "out")]) == 2


def test_feedback_export_and_refit_teach_the_model_its_false_alarms(run, served, category, tmp_path, monkeypatch,
                                                                     capsys):
    """The loop on real test normals: serve, judge every flagged normal a false alarm, export, refit; the held-out
    false alarms pass after the refit, RUN is unchanged."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    state = default_state_dir(run)  # what `anomalens serve RUN` uses without --state
    run_before = folder_digest(run)
    with client(create_app(served, state_dir=state)) as c:
        results = [(post(c, path), label) for path, label in labelled_test_images(category)]
        for result, label in results:
            if label == 0 and result["anomalous"]:
                judgement = "false_alarm"
            elif label == 1:
                judgement = "confirmed_defect" if result["anomalous"] else "missed_defect"
            else:
                continue
            assert c.post(f"/feedback/{result['history_id']}", json={"judgement": judgement}).status_code == 200
    false_alarms = [r for r, label in results if label == 0 and r["anomalous"]]
    assert len(false_alarms) >= 2, "the tiny model flags fewer than two test normals: no false alarm to learn from"

    out = tmp_path / "feedback-data"
    assert main(["feedback", "export", str(run), str(out)]) == 0  # the run's default state folder
    exported = load_dataset(out)
    assert len(exported.train) == len(false_alarms)
    assert sorted(r.label for r in exported.test) == [0] * len(false_alarms) + [1] * 4
    assert json.loads((out / "feedback.json").read_text())["counts"]["false_alarm"] == len(false_alarms)

    new_run = tmp_path / "refitted"
    capsys.readouterr()
    assert main(["refit", str(run), "--with-feedback", "-o", str(new_run), "--holdout", "0.5", "--device", "cpu", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "false-alarm rate" in printed and "before" in printed
    report = json.loads((new_run / "refit.json").read_text())
    held_ids = set(report["feedback"]["held_out_ids"])
    fit_ids = set(report["feedback"]["fit_ids"])
    assert not held_ids & fit_ids and report["feedback"]["added_normals"] >= 1
    before, after = report["held_out"]["before"], report["held_out"]["after"]
    assert before["n_normal"] >= 1
    assert before["false_alarm_rate"] == 1.0  # they were the old model's false alarms
    assert after["false_alarm_rate"] < before["false_alarm_rate"]  # ... and the refitted model passes them
    assert json.loads((new_run / "run.json").read_text())["n_train_images"] == 12 + report["feedback"]["added_normals"]
    # the fed-back false alarms themselves now read as normal
    refitted = load_served_model(new_run)
    with client(create_app(refitted)) as c:
        fed = [r for r in false_alarms if r["history_id"] in fit_ids]
        paths = {f"{p.parent.name}-{p.name}": p for p, _ in labelled_test_images(category)}
        assert all(not post(c, paths[r["image"]])["anomalous"] for r in fed)
    assert folder_digest(run) == run_before  # RUN only read

    assert main(["refit", str(run), "--with-feedback", "-o", str(run), "--overwrite"]) == 2
    assert "never changes" in capsys.readouterr().err
    assert main(["refit", str(run), "--with-feedback", "-o", str(tmp_path / "x"), "--data", str(tmp_path / "gone")]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert folder_digest(run) == run_before


def test_serve_options_name_the_state_folder(tmp_path, monkeypatch):
    from anomalens.cli import build_parser
    from anomalens.errors import ConfigError
    from anomalens.serve.settings import settings_from_args

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    parser = build_parser()
    default = settings_from_args(parser.parse_args(["serve", "runs/x"]))
    assert Path(default.state_dir) == default_state_dir("runs/x") and Path(default.state_dir).parent.parent.parent == tmp_path
    given = settings_from_args(parser.parse_args(["serve", "runs/x", "--state", "s", "--history-max-images", "5"]))
    assert (given.state_dir, given.history_max_images) == ("s", 5)
    assert settings_from_args(parser.parse_args(["serve", "runs/x", "--no-history"])).state_dir is None
    with pytest.raises(ConfigError, match="contradict"):
        settings_from_args(parser.parse_args(["serve", "runs/x", "--no-history", "--state", "s"]))
    with pytest.raises(ConfigError, match="--history-max-mb"):
        settings_from_args(parser.parse_args(["serve", "runs/x", "--history-max-mb", "-1"]))
