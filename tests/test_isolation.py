"""No visitor changes what another sees: the cache-poisoning attack of the issue, replayed with two sessions.

Session A brings a model whose weights file is the shipped CNN's, byte for byte (same sha256), under a card
that claims another architecture (average pooling and a ReLU after fc1: the same tensors fit). Everything
the Model page measures for it is cached process-wide. Session B, which never uploaded anything, must
then see the shipped model's own figures. AppTest instances in one process share Streamlit's caches,
as sessions of one server do: that is what makes this test meaningful.
"""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from cnn_core.checkpoint import load_checkpoint_bytes
from cnn_core.evaluate import evaluate
from ui.state import MODEL_KEY, OWN_MODELS_KEY, SHIPPED_ID, model_id_of

PAGES = Path(__file__).resolve().parent.parent / "pages"
MODEL_PAGE = str(PAGES / "4_Model.py")


def measured_accuracy(at: AppTest) -> str:
    return [m.value for m in at.metric if m.label == "Accuracy (measured)"][0]


def test_a_card_claiming_another_architecture_does_not_poison_another_session(shipped, test_split):
    from cnn_core.checkpoint import SHIPPED_WEIGHTS

    weights_path = Path(SHIPPED_WEIGHTS)  # the `shipped` fixture's file
    card = json.loads(weights_path.with_suffix(".json").read_text())
    card["architecture"] = dict(card["architecture"], pool="avg", hidden_relu=True)
    card["origin"] = "uploaded"
    forged = load_checkpoint_bytes(weights_path.read_bytes(), json.dumps(card).encode(), where="forged.pt")
    assert forged.card["sha256"] == shipped.card["sha256"]  # the same weights file...
    assert forged.identity != shipped.identity  # ...but another model

    a = AppTest.from_file(MODEL_PAGE, default_timeout=300)
    a.session_state[OWN_MODELS_KEY] = {model_id_of(forged): forged}
    a.session_state[MODEL_KEY] = model_id_of(forged)
    a.run()
    assert not a.exception
    forged_accuracy = evaluate(forged.model, test_split).accuracy
    assert measured_accuracy(a) == f"{forged_accuracy:.2%}"  # A sees its own model, measured

    b = AppTest.from_file(MODEL_PAGE, default_timeout=300)
    b.session_state[MODEL_KEY] = SHIPPED_ID
    b.run()
    assert not b.exception
    truth = evaluate(shipped.model, test_split)
    assert forged_accuracy != truth.accuracy  # the attack would show
    assert measured_accuracy(b) == f"{truth.accuracy:.2%}"
    correct = int(truth.confusion.diagonal().sum())
    assert [m.value for m in b.metric if m.label == "Correct"][0] == f"{correct:,} of {len(test_split):,}"
