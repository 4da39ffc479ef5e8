"""The PyTorch ELECTRA matches transformers' reference implementation weight for weight."""
import pytest
import torch

from edge_electra.errors import ConfigError
from edge_electra.train.checkpoint import load_pretrained, save_pretrained
from edge_electra.train.config import preset
from edge_electra.train.model import Electra

transformers = pytest.importorskip("transformers", reason="transformers is the test-only reference")

HF_SHAPE = dict(vocab_size=120, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=64)


def random_batch(vocab=120, batch=4, seq=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate([seq, 9, 4, 1][:batch]):
        mask[row, length:] = 0
    types = torch.zeros_like(ids)
    types[:, seq // 2:] = 1
    return ids, mask, types


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.ElectraConfig(**HF_SHAPE, num_labels=5)
    ref = transformers.ElectraForSequenceClassification(cfg).eval()
    folder = tmp_path_factory.mktemp("hf")
    ref.save_pretrained(folder)
    return folder, ref


def test_encoder_matches_electra_model(hf_folder):
    folder, _ = hf_folder
    ref = transformers.ElectraModel.from_pretrained(folder).eval()
    ours, report = load_pretrained(folder)
    ours.eval()
    assert report["unused"] == []
    ids, mask, types = random_batch()
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = ours.encoder(ids, mask, types)
    kept = mask.bool()
    assert (expected - got)[kept].abs().max() < 1e-4


def test_sequence_classification_matches(hf_folder):
    folder, ref = hf_folder
    ours, report = load_pretrained(folder)
    ours.eval()
    assert report["missing"] == [] and ours.config.num_labels == 5
    ids, mask, types = random_batch(seed=1)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours(ids, mask, types)
    assert (expected - got).abs().max() < 1e-4
    assert ours.config.pooling == "cls"   # a config without our section reads [CLS], as transformers does


def test_mean_pooling_classifies_the_mean_of_the_real_tokens_states():
    torch.manual_seed(0)
    model = Electra(preset("tiny", vocab_size=120, labels=list("abc"), pooling="mean")).eval()
    ids, mask, types = random_batch()
    with torch.no_grad():
        hidden = model.encoder(ids, mask, types)
        means = torch.stack([hidden[row, :int(mask[row].sum())].mean(0) for row in range(ids.shape[0])])
        head = model.head
        expected = head.out(torch.nn.functional.gelu(head.dense(means)))
        assert (model(ids, mask, types) - expected).abs().max() < 1e-5
        assert (model(ids, mask, types) - head.out(torch.nn.functional.gelu(head.dense(hidden[:, 0])))).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="pooling"):
        preset("tiny", pooling="max")


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_batch_one_matches_padded_batch(pooling):
    torch.manual_seed(0)
    model = Electra(preset("tiny", vocab_size=120, labels=list("abc"), pooling=pooling)).eval()
    ids, mask, types = random_batch()
    with torch.no_grad():
        batched = model(ids, mask, types)
        for row in range(ids.shape[0]):
            n = int(mask[row].sum())
            alone = model(ids[row:row + 1, :n], mask[row:row + 1, :n], types[row:row + 1, :n])
            assert (alone[0] - batched[row]).abs().max() < 1e-5


@pytest.mark.parametrize("task,hf_class", [
    ("discriminator", "ElectraForPreTraining"),
    ("generator", "ElectraForMaskedLM"),
    ("sequence", "ElectraForSequenceClassification"),
    ("token", "ElectraForTokenClassification"),
])
def test_transformers_loads_what_we_save(tmp_path, task, hf_class):
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=120, task=task, labels=["x", "y", "z"] if task == "sequence" else [],
                 slot_labels=["O", "B-room", "I-room"] if task == "token" else [])
    ours = Electra(cfg).eval()
    save_pretrained(ours, tmp_path / "ckpt")
    ref = getattr(transformers, hf_class).from_pretrained(tmp_path / "ckpt").eval()
    ids, mask, types = random_batch(seed=2)
    with torch.no_grad():
        assert (ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
                - ours(ids, mask, types)).abs().max() < 1e-4
    again, _ = load_pretrained(tmp_path / "ckpt")
    assert again.config.task == task and again.config.labels == cfg.labels


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_joint_model_round_trips(tmp_path, pooling):
    cfg = preset("tiny", vocab_size=120, task="joint", labels=["a", "b"], slot_labels=["O", "B-x", "I-x"],
                 pooling=pooling)
    ours = Electra(cfg).eval()
    save_pretrained(ours, tmp_path / "joint")
    again, report = load_pretrained(tmp_path / "joint")
    again.eval()
    assert report["missing"] == [] and again.config.slot_labels == cfg.slot_labels
    assert again.config.pooling == pooling
    ids, mask, types = random_batch(seed=3)
    with torch.no_grad():
        for a, b in zip(ours(ids, mask, types), again(ids, mask, types)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_sdpa_attention_exports_to_onnx(tmp_path, pooling):
    ort = pytest.importorskip("onnxruntime")
    model = Electra(preset("tiny", vocab_size=120, labels=list("abc"), pooling=pooling)).eval()
    ids, mask, types = random_batch()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (ids, mask, types), path, input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={n: {0: "batch", 1: "seq"} for n in ["input_ids", "attention_mask", "token_type_ids"]})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), (ids, mask, types))}
    with torch.no_grad():
        assert abs(session.run(None, feeds)[0] - model(ids, mask, types).numpy()).max() < 1e-4


@pytest.mark.parametrize("act", ["relu", "gelu_new", "gelu_pytorch_tanh"])
def test_hidden_act_matches_transformers(tmp_path, act):
    """Defect 10: hidden_act was ignored; a discriminator with another activation must compute what HF computes."""
    torch.manual_seed(0)
    ref = transformers.ElectraForPreTraining(transformers.ElectraConfig(**HF_SHAPE, hidden_act=act)).eval()
    ref.save_pretrained(tmp_path / "hf")
    ours, _ = load_pretrained(tmp_path / "hf")
    ids, mask, types = random_batch(seed=4)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours.eval()(ids, mask, types)
    assert (expected - got)[mask.bool()].abs().max() < 1e-4
