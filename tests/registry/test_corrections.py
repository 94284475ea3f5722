"""Learning from corrections (issue 30): the corrections read back from the registry and the store (older ones as
extra images, the newest held back, damaged ones skipped with one line), the rule that judges such a run, and the
announcement that triggers it (once, and again after a send that failed) against a real Prefect server."""

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import update

from launch.server import free_port
from mnist_core.data.extra import read_extra, scan_extra
from mnist_core.records import Promotion
from mnist_core.registry.corrections import gather_corrections, load_held_back
from mnist_core.registry.feedback import FeedbackEntry, FeedbackStore, feedback
from mnist_core.registry.rule import ChampionScore, judge_with_corrections
from mnist_core.serving.announce import EVENT, FeedbackAnnouncer
from tests.support.waiting import wait_until


def add(store: FeedbackStore, count: int, start: int = 0, label: int | None = None) -> list[int]:
    """`count` corrections of distinct made-up 28x28 images, one second apart (so the newest are the last)."""
    ids = []
    for number in range(start, start + count):
        image = np.zeros((28, 28), np.uint8)
        image[4 + number % 20, 4:24] = 255
        image[4:24, 4 + number // 20 % 20] = 200
        at = f"2026-12-07T10:{number // 60:02d}:{number % 60:02d}Z"
        entry = FeedbackEntry(dataset="mnist", label=number % 11 if label is None else label, at=at,
                              image=image.tobytes())  # fmt: skip
        ids.append(store.add(entry)[0])
    return ids


def test_corrections_are_read_back_split_by_time_and_damaged_ones_skipped(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "runs")
    ids = add(store, 12)
    with store.registry.engine.begin() as connection:  # one label out of range, one image not what its hash names
        connection.execute(update(feedback).where(feedback.c.id == ids[3]).values(label=42))
        connection.execute(update(feedback).where(feedback.c.id == ids[5]).values(image_sha256="0" * 64))
    corrections = gather_corrections(store, "mnist", tmp_path / "data", holdout=0.2)
    first, second = corrections.skipped
    assert first == f"feedback {ids[3]}: label 42 is not a class (skipped)"
    assert second.startswith(f"feedback {ids[5]}: image unreadable (") and "no such object" in second
    usable = [i for i in ids if i not in (ids[3], ids[5])]
    assert corrections.held_back_ids == usable[-2:] and corrections.trained_ids == usable[:-2]  # the newest held back
    images, labels = read_extra(scan_extra(corrections.folder, "mnist"))  # the extra-data path reads the folder
    assert len(labels) == 8 and set(labels.tolist()) <= set(range(11))  # not-a-digit (10) included
    held_images, held_labels = load_held_back(corrections.held_back)
    assert held_images.shape == (2, 28, 28) and len(held_labels) == 2
    assert gather_corrections(store, "mnist", tmp_path / "data", 0.2).folder == corrections.folder  # same set
    store.record_corrections("run-1", corrections.trained_ids, corrections.held_back_ids)
    store.record_corrections("run-1", corrections.trained_ids, corrections.held_back_ids)  # again: nothing new
    assert store.corrections_of("run-1") == {"trained": usable[:-2], "held_back": usable[-2:]}
    assert store.pending("mnist") == [ids[3], ids[5], *usable[-2:]]  # not trained on (the damaged ones neither)


def promotion(held: tuple[float, float], test: tuple[float, float], tolerance: float = 0.002) -> Promotion:
    champion = ChampionScore("champ", test[1])
    return judge_with_corrections(test[0], held[0], champion, held[1], tolerance)


def test_a_run_on_corrections_needs_them_better_and_the_test_set_within_the_tolerance() -> None:
    assert promotion((0.9, 0.5), (0.980, 0.981)).promoted  # 0.1 points lower: within 0.2
    kept = promotion((0.9, 0.5), (0.978, 0.981))
    assert not kept.promoted and "worse on the test set than the tolerance allows" in kept.reason
    flood = promotion((1.0, 0.2), (0.95, 0.981))  # learnt a flood of wrong labels: reads them, fails the test set
    assert not flood.promoted
    assert not promotion((0.4, 0.5), (0.99, 0.98)).promoted  # worse on the corrections
    tie = promotion((1.0, 1.0), (0.982, 0.981))  # both read them all: the test set decides, as for any run
    assert tie.promoted and "decided on the test set" in tie.reason
    assert judge_with_corrections(0.97, 0.9, None, None, 0.002).kind == "first"


@pytest.mark.usefixtures("prefect_server")
def test_pending_corrections_are_announced_once_and_again_after_a_failed_send(
    tmp_path: Path, prefect_server: str
) -> None:
    store = FeedbackStore(tmp_path / "runs")
    add(store, 4)
    down = FeedbackAnnouncer(store, "mnist", threshold=5, api_url=f"http://127.0.0.1:{free_port()}/api")
    assert not down.check() and down.pending == 4  # below the threshold: nothing to send
    add(store, 3, start=4)
    assert not down.check() and down.pending == 7  # the server is down: not sent, the claim given back
    assert store.announced_up_to("mnist") == 0
    announcer = FeedbackAnnouncer(store, "mnist", threshold=5, api_url=prefect_server)
    assert announcer.check()  # the next look, with the server up, sends it
    assert not announcer.check() and not FeedbackAnnouncer(store, "mnist", 5, prefect_server).check()  # once

    def announced() -> list[dict]:  # the server stores events a moment after it took them
        found = httpx.post(f"{prefect_server}/events/filter",
                           json={"filter": {"event": {"name": [EVENT]}}, "limit": 50}, timeout=10).json()  # fmt: skip
        return [event["payload"] for event in found["events"] if event["payload"].get("output_dir") == str(store.root)]

    payloads = wait_until(announced, 20, "the event never showed on the server", every_s=0.25)
    assert len(payloads) == 1 and payloads[0]["pending"] == 7 and payloads[0]["threshold"] == 5
    assert json.dumps(payloads[0])  # plain JSON: what the trigger's templates read
