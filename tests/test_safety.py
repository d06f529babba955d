"""Safety layers in the served app: ShieldGemma classifier (tiny checkpoint) and the word filter."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from models.materialize import materialize
from models.safety_classifier import SafetyClassifier
from tests.serve_harness import decode_images, deployed, local_args, metric_value, scrape_metrics

APP = "sana-safety"
PROMPTS = ["a quiet lake at dawn", "a dragon made of fire", "a bowl of cherries", "a city in the rain"]


@pytest.fixture(scope="module")
def classifier_checkpoint(tmp_path_factory):
    return materialize("tiny-shieldgemma", tmp_path_factory.mktemp("shieldgemma"))


@pytest.fixture(scope="module")
def scores(classifier_checkpoint) -> dict[str, float]:
    classifier = SafetyClassifier.from_pretrained(str(classifier_checkpoint), device="cpu")
    prompts = PROMPTS + ["A red heart."]
    return dict(zip(prompts, classifier.scores(prompts)))


@pytest.fixture(scope="module")
def threshold(scores) -> float:
    """Between the two highest-scoring prompts: exactly one prompt is 'unsafe' to the tiny model."""
    ranked = sorted(scores[p] for p in PROMPTS)
    assert ranked[-1] > ranked[-2], ranked
    return (ranked[-1] + ranked[-2]) / 2


def test_scores_are_probabilities_and_batch_independent(classifier_checkpoint, scores):
    classifier = SafetyClassifier.from_pretrained(str(classifier_checkpoint), device="cpu")
    for prompt, score in scores.items():  # scored as one batch above, one by one here
        assert 0.0 < score < 1.0
        assert classifier.scores([prompt])[0] == pytest.approx(score, abs=1e-6)
    assert classifier.scores([]) == []


@pytest.fixture(scope="module")
def base_url(ray_serve, tiny_checkpoint, classifier_checkpoint, threshold):
    args = local_args(str(tiny_checkpoint))
    args["safety"] = {
        "word_filter": {"enabled": True, "extra_words": ["dragon"]},
        "classifier": {
            "enabled": True,
            "checkpoint": str(classifier_checkpoint),
            "threshold": threshold,
            "deployment": {"ray_actor_options": {"num_cpus": 0.1}},
        },
    }
    with deployed(args, APP, "/"):
        yield ray_serve


def _generate(base_url: str, prompt: str, **extra) -> dict:
    body = {"prompt": prompt, "size": "512x512", "num_inference_steps": 2, "seed": 3, **extra}
    response = httpx.post(f"{base_url}/v1/images/generations", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _count(layer: str) -> float:
    """Prompts this app changed in `layer`, as the gateway's Prometheus counter reports them."""
    return metric_value(scrape_metrics(), "ray_sana_safety_replacements_total", APP, layer=layer)


def _expect_count(layer: str, expected: float, timeout_s: float = 30) -> None:
    """The counter reaches `expected` (Ray exports every second) and stays there."""
    deadline = time.monotonic() + timeout_s
    while _count(layer) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.5)  # anything counted twice would have been exported by now
    assert _count(layer) == expected, layer


def test_classifier_replaces_only_prompts_above_the_threshold(base_url, scores, threshold):
    unsafe = max(PROMPTS, key=scores.get)
    safe = [p for p in PROMPTS if scores[p] < threshold and "dragon" not in p]
    before = _count("classifier")
    flagged = _generate(base_url, unsafe)
    assert flagged["data"][0]["revised_prompt"] == "A red heart."
    # What was generated is the replacement prompt's image, not the original's.
    heart = _generate(base_url, "A red heart.")
    assert np.array_equal(decode_images(flagged), decode_images(heart))
    for prompt in safe:
        kept = _generate(base_url, prompt)
        assert kept["data"][0]["revised_prompt"] == prompt
    # The unsafe prompt, plus the replacement prompt itself if the tiny model happens to flag it too.
    _expect_count("classifier", before + 1 + int(scores["A red heart."] > threshold))


def test_word_filter_outcome_shows_in_revised_prompt_and_counts(base_url, scores, threshold):
    before = _count("word_filter")
    payload = _generate(base_url, "a d.r.a.g.o.n over the lake")
    revised = payload["data"][0]["revised_prompt"]
    assert revised in ("a \u2764\ufe0f over the lake", "A red heart.")
    _expect_count("word_filter", before + 1)
    negative = _generate(base_url, "a quiet lake at dawn", negative_prompt="no dragons, no dragon")
    assert negative["data"][0]["revised_prompt"] == "a quiet lake at dawn"
    _expect_count("word_filter", before + 2)
