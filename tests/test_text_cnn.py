"""Tests of the text CNN (reference `GlobalPoolingCNN`, by-liu/MbLS calibrate/net/ng_model.py) as an HF model."""

import math

import numpy as np
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    Trainer,
    TrainingArguments,
)

from mbls_nlp.models import (
    TextCNNConfig,
    TextCNNForSequenceClassification,
    TextCNNModel,
    load_pretrained_embeddings,
    train_word_tokenizer,
)
from mbls_nlp.newsgroups import clean_newsgroups


def tiny_config(**kwargs):
    # Mixed kernel sizes (2, 3) and a pooling of 2 exercise the receptive-field arithmetic: 1 + (1 + 2) + 1 = 5.
    defaults = dict(
        vocab_size=30, embedding_dim=4, num_filters=3, kernel_sizes=[2, 3], pool_size=2, hidden_size=5, num_labels=3
    )
    defaults.update(kwargs)
    return TextCNNConfig(**defaults)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = TextCNNForSequenceClassification(tiny_config(**kwargs))
    return model.eval()


# --- numpy float64 references, written per layer on the unpadded text (no masks) -----------------------------


def _conv(x, weight, bias, pad):
    # x: (in_channels, length); weight: (out, in, k). `pad` zeros on both sides: 0 = "valid", k - 1 = "full".
    k = weight.shape[2]
    x = np.pad(x, ((0, 0), (pad, pad)))
    out = np.empty((weight.shape[0], x.shape[1] - k + 1))
    for t in range(out.shape[1]):
        out[:, t] = np.einsum("oik,ik->o", weight, x[:, t : t + k]) + bias
    return out


def _maxpool(x, k, pad):
    # Zero padding is harmless for a max over ReLU outputs (all >= 0) and stands for "outside the text".
    x = np.pad(x, ((0, 0), (pad, pad)))
    return np.stack([x[:, t : t + k].max(axis=1) for t in range(x.shape[1] - k + 1)], axis=1)


def reference_logits(model, token_ids, full):
    """float64 logits of one text. full=False: the reference GlobalPoolingCNN literally (valid convolutions and
    poolings). full=True: the documented masked semantics, i.e. "full" convolutions and poolings (zero padding of
    k - 1 on both sides at every layer) over the real tokens only, then the global max."""
    p = {name: t.detach().double().numpy() for name, t in model.state_dict().items()}
    config = model.config
    x = p["text_cnn.embed_tokens.weight"][token_ids].T  # (embedding_dim, length)
    for i, k in enumerate(config.kernel_sizes):
        x = np.maximum(
            _conv(x, p[f"text_cnn.convs.{i}.weight"], p[f"text_cnn.convs.{i}.bias"], k - 1 if full else 0), 0
        )
        if i < len(config.kernel_sizes) - 1:
            x = _maxpool(x, config.pool_size, config.pool_size - 1 if full else 0)
    pooled = x.max(axis=1)
    hidden = np.maximum(p["pre_classifier.weight"] @ pooled + p["pre_classifier.bias"], 0)
    return p["classifier.weight"] @ hidden + p["classifier.bias"]


# --- configuration --------------------------------------------------------------------------------------------


def test_config_defaults_follow_the_reference():
    config = TextCNNConfig()
    # GlobalPoolingCNN: Conv1d(100 -> 128, k=5) x3, max_pool1d(5, stride 1) between, fc1 128, fc2 20 classes,
    # dropout commented out; the loader's GloVe is 100d and its padding index is 0.
    assert config.model_type == "text_cnn"
    assert (config.embedding_dim, config.num_filters, config.kernel_sizes, config.pool_size) == (
        100,
        128,
        [5, 5, 5],
        5,
    )
    assert (config.hidden_size, config.dropout, config.num_labels, config.pad_token_id) == (128, 0.0, 20, 0)
    # 1 + 3 convolutions * (5 - 1) + 2 poolings * (5 - 1) = 21 tokens.
    assert config.receptive_field == 21
    assert TextCNNConfig(num_labels=4).num_labels == 4


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"kernel_sizes": []}, "kernel_sizes"),
        ({"kernel_sizes": [3, 0]}, "kernel_sizes"),
        ({"dropout": 1.0}, "dropout"),
        ({"pad_token_id": 30}, "pad_token_id"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"pool_size": -1}, "pool_size"),
    ],
)
def test_config_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=name):
        tiny_config(**kwargs)


def test_auto_classes_are_registered():
    config = AutoConfig.for_model("text_cnn", vocab_size=12, embedding_dim=2, num_filters=2, kernel_sizes=[2])
    assert isinstance(config, TextCNNConfig)
    assert isinstance(AutoModelForSequenceClassification.from_config(config), TextCNNForSequenceClassification)
    assert isinstance(AutoModel.from_config(config), TextCNNModel)


# --- forward against float64 references -----------------------------------------------------------------------


def test_unmasked_mode_equals_reference_global_pooling_cnn():
    model = make_model(mask_padding=False)
    ids = torch.tensor([[3, 7, 1, 9, 4, 4, 12, 5], [8, 2, 2, 6, 11, 3, 0, 0]])
    logits = model(ids).logits.detach().double().numpy()
    for row in range(2):
        # The reference convolves over padding too: the full row, zeros included.
        expected = reference_logits(model, ids[row].numpy(), full=False)
        np.testing.assert_allclose(logits[row], expected, rtol=1e-5, atol=1e-6)


def test_masked_mode_equals_full_convolutions_on_the_real_tokens():
    model = make_model()
    texts = [[3, 7, 1, 9, 4, 4, 12, 5], [8, 2, 6], [17]]  # the 1-token text is shorter than the receptive field
    width = 10
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for row, text in enumerate(texts):
        ids[row, : len(text)] = torch.tensor(text)
        mask[row, : len(text)] = 1
    logits = model(ids, attention_mask=mask).logits.detach().double().numpy()
    for row, text in enumerate(texts):
        np.testing.assert_allclose(
            logits[row], reference_logits(model, np.array(text), full=True), rtol=1e-5, atol=1e-6
        )


def test_padding_never_wins_and_batch_composition_does_not_matter():
    model = make_model()
    text = torch.tensor([5, 9, 2, 14, 7, 3])
    alone = model(text[None]).logits
    # Padding on the right, on the left, much or little, with arbitrary ids under the mask and a huge pad
    # embedding: none of it may change the logits of the text.
    with torch.no_grad():
        model.get_input_embeddings().weight[0] = 1e4
    for left, right, filler in [(0, 3, 0), (4, 0, 0), (2, 17, 0), (0, 40, 13)]:
        ids = torch.cat([torch.full((left,), filler), text, torch.full((right,), filler)])[None]
        mask = torch.cat([torch.zeros(left), torch.ones(len(text)), torch.zeros(right)]).long()[None]
        torch.testing.assert_close(model(ids, attention_mask=mask).logits, alone, rtol=1e-5, atol=1e-6)


def test_all_padding_row_gives_finite_logits():
    model = make_model()
    out = model(torch.zeros(2, 6, dtype=torch.long), attention_mask=torch.tensor([[0] * 6, [1] + [0] * 5]))
    assert torch.isfinite(out.logits).all()


def test_unmasked_mode_fails_on_texts_shorter_than_the_receptive_field():
    model = make_model(mask_padding=False)  # receptive field 5
    with pytest.raises(RuntimeError):
        model(torch.tensor([[1, 2, 3]]))


def test_loss_is_mean_cross_entropy_and_tuple_outputs():
    model = make_model()
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0], [9, 10, 11, 0]])
    mask = (ids != 0).long()
    labels = torch.tensor([2, 0, 1])
    out = model(ids, attention_mask=mask, labels=labels)
    logits = out.logits.detach().double()
    # -log softmax(z)_y = logsumexp(z) - z_y, averaged over the 3 rows.
    expected = np.mean(
        [math.log(math.fsum(math.exp(v) for v in z)) - z[y] for z, y in zip(logits.tolist(), [2, 0, 1])]
    )
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    loss, tuple_logits = model(ids, attention_mask=mask, labels=labels, return_dict=False)
    torch.testing.assert_close(tuple_logits, out.logits)
    (only_logits,) = model(ids, attention_mask=mask, return_dict=False)
    torch.testing.assert_close(only_logits, out.logits)
    # Extra keyword arguments of other tokenizers / the Trainer are ignored.
    torch.testing.assert_close(
        model(ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits, out.logits
    )


def test_dropout_sits_before_the_classifier_and_is_off_in_eval():
    model = make_model(dropout=0.5)
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    torch.testing.assert_close(model(ids).logits, model(ids).logits)  # eval: deterministic
    model.train()
    torch.manual_seed(0)
    outs = torch.stack([model(ids).logits for _ in range(20)])
    assert outs.std(dim=0).max() > 0


def test_initialisation_is_pytorch_default_and_pad_row_is_zero():
    model = make_model(vocab_size=2000, embedding_dim=8)
    table = model.get_input_embeddings().weight.detach()
    assert torch.count_nonzero(table[0]) == 0
    assert table[1:].std().item() == pytest.approx(1.0, abs=0.05)  # N(0, 1) over 15992 draws
    conv = model.text_cnn.convs[1]
    # kaiming_uniform(a=sqrt(5)) bound = sqrt(6 / ((1 + 5) * fan_in)) = 1 / sqrt(fan_in); fan_in = 3 filters * k=3.
    bound = 1 / math.sqrt(9)
    assert conv.weight.abs().max() <= bound and conv.bias.abs().max() <= bound
    assert conv.weight.abs().max() > 0.5 * bound  # really uniform over the range, not the 0.02-normal HF default


# --- embeddings -----------------------------------------------------------------------------------------------


def test_frozen_embeddings_get_no_gradient_and_survive_save_load(tmp_path):
    model = make_model(freeze_embeddings=True)
    model.train()
    model(torch.tensor([[3, 4, 5, 6]]), labels=torch.tensor([1])).loss.backward()
    assert model.get_input_embeddings().weight.grad is None
    assert model.text_cnn.convs[0].weight.grad is not None
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert reloaded.config.freeze_embeddings is True
    assert not reloaded.get_input_embeddings().weight.requires_grad


@pytest.mark.parametrize("model_class", [TextCNNModel, TextCNNForSequenceClassification])
def test_the_freeze_follows_the_config_at_construction_and_after_loading(model_class, tmp_path):
    for freeze in (True, False):
        model = model_class(tiny_config(freeze_embeddings=freeze))
        assert model.get_input_embeddings().weight.requires_grad is not freeze
        model.save_pretrained(tmp_path / str(freeze))
        reloaded = model_class.from_pretrained(tmp_path / str(freeze))
        assert reloaded.get_input_embeddings().weight.requires_grad is not freeze
    # load_pretrained_embeddings records its choice in the config and applies it, both ways.
    model = load_pretrained_embeddings(model_class(tiny_config()), torch.ones(30, 4), freeze=False)
    assert model.get_input_embeddings().weight.requires_grad and model.config.freeze_embeddings is False


def test_trainable_embeddings_leave_the_pad_row_without_gradient():
    model = make_model()
    model.train()
    model(
        torch.tensor([[3, 4, 5, 0]]), attention_mask=torch.tensor([[1, 1, 1, 0]]), labels=torch.tensor([1])
    ).loss.backward()
    grad = model.get_input_embeddings().weight.grad
    assert torch.count_nonzero(grad[0]) == 0 and torch.count_nonzero(grad[3]) > 0


def test_load_pretrained_embeddings_from_tensor():
    model = make_model()
    table = torch.arange(30 * 4, dtype=torch.float32).reshape(30, 4)
    load_pretrained_embeddings(model, table)
    weight = model.get_input_embeddings().weight
    torch.testing.assert_close(weight[1:], table[1:])
    assert torch.count_nonzero(weight[0]) == 0  # the padding row is zero, like Keras index 0 in the reference
    assert not weight.requires_grad and model.config.freeze_embeddings
    with pytest.raises(ValueError, match="embeddings"):
        load_pretrained_embeddings(model, torch.zeros(30, 5))
    with pytest.raises(TypeError, match="model"):
        load_pretrained_embeddings(torch.nn.Linear(2, 2), table)


def test_from_pretrained_embeddings_of_another_hf_model(tmp_path):
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=40,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            pad_token_id=1,
        )
    )
    bert.save_pretrained(tmp_path / "bert")
    model = TextCNNForSequenceClassification.from_pretrained_embeddings(
        tmp_path / "bert", num_labels=2, num_filters=3, kernel_sizes=[2]
    )
    source = bert.get_input_embeddings().weight.detach()
    assert (model.config.vocab_size, model.config.embedding_dim, model.config.pad_token_id) == (40, 8, 1)
    weight = model.get_input_embeddings().weight
    torch.testing.assert_close(weight[[0, *range(2, 40)]], source[[0, *range(2, 40)]])
    assert torch.count_nonzero(weight[1]) == 0 and not weight.requires_grad
    with pytest.raises(ValueError, match="embedding_dim"):
        TextCNNForSequenceClassification.from_pretrained_embeddings(tmp_path / "bert", embedding_dim=4)


# --- transformers integration ---------------------------------------------------------------------------------


def test_save_pretrained_round_trip(tmp_path):
    model = make_model(num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is TextCNNForSequenceClassification
    assert reloaded.config.id2label == {0: "a", 1: "b", 2: "c"} and reloaded.config.kernel_sizes == [2, 3]
    ids = torch.tensor([[3, 4, 5, 6, 0], [9, 8, 7, 0, 0]])
    torch.testing.assert_close(
        reloaded(ids, attention_mask=(ids != 0).long()).logits, model(ids, (ids != 0).long()).logits
    )
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def test_trains_under_transformers_trainer(tmp_path):
    model = make_model(freeze_embeddings=True)
    assert model.main_input_name == "input_ids" and model.supports_gradient_checkpointing is False
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(24):
        ids = torch.randint(2, 30, (8,), generator=generator)
        rows.append(
            {"input_ids": ids, "attention_mask": torch.ones(8, dtype=torch.long), "labels": torch.tensor(i % 3)}
        )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        max_steps=3,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_ListDataset(rows), eval_dataset=_ListDataset(rows))
    # The loss is a batch mean that ignores num_items_in_batch: the Trainer must scale it for accumulation itself.
    assert trainer.model_accepts_loss_kwargs is False
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    after = dict(model.named_parameters())
    assert torch.equal(after["text_cnn.embed_tokens.weight"], before["text_cnn.embed_tokens.weight"])
    assert not torch.equal(after["text_cnn.convs.0.weight"], before["text_cnn.convs.0.weight"])
    assert math.isfinite(trainer.evaluate()["eval_loss"])
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    ids = torch.stack([r["input_ids"] for r in rows[:4]])
    torch.testing.assert_close(reloaded(ids).logits, model.eval()(ids).logits)


# --- word tokenizer (tokenization_text_cnn.py) ------------------------------------------------------------------


def test_word_tokenizer_splits_like_keras_filters():
    tok = train_word_tokenizer(["a a a b b c", "Don't stop-me now!"], vocab_size=50, max_length=16)
    # Lowercased; "-" and "!" are Keras filters, "'" is not.
    assert tok.tokenize("Don't STOP-me, (now)") == ["don't", "stop", "me", "now"]
    vocab = tok.get_vocab()
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1 and tok.pad_token_id == 0
    # Most frequent first: "a" (3 times) then "b" (2 times).
    assert (vocab["a"], vocab["b"]) == (2, 3)
    assert tok("zebra a")["input_ids"] == [1, 2]


def test_word_tokenizer_vocab_size_padding_and_left_truncation():
    texts = [" ".join(f"w{i}" for i in range(j)) for j in range(1, 30)]  # w0 appears 29 times, w28 once
    tok = train_word_tokenizer(texts, vocab_size=12, max_length=5)
    assert len(tok) == 12  # 2 special tokens + the 10 most frequent words w0..w9
    assert set(tok.get_vocab()) == {"[PAD]", "[UNK]"} | {f"w{i}" for i in range(10)}
    enc = tok(["w0 w1 w2 w3 w4 w5 w6", "w3"], truncation=True, padding="max_length")
    # Truncation keeps the last 5 words, like Keras' truncating="pre"; padding goes right with a 0 mask.
    assert tok.convert_ids_to_tokens(enc["input_ids"][0]) == ["w2", "w3", "w4", "w5", "w6"]
    assert enc["input_ids"][1] == [tok.convert_tokens_to_ids("w3"), 0, 0, 0, 0]
    assert enc["attention_mask"][1] == [1, 0, 0, 0, 0]
    assert set(enc) == {"input_ids", "attention_mask"}
    right = train_word_tokenizer(texts, vocab_size=12, max_length=5, truncation_side="right")
    assert right.convert_ids_to_tokens(right("w0 w1 w2 w3 w4 w5 w6", truncation=True)["input_ids"])[0] == "w0"


def test_word_tokenizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        train_word_tokenizer(["a"], vocab_size=2)
    with pytest.raises(ValueError, match="max_length"):
        train_word_tokenizer(["a"], max_length=0)
    with pytest.raises(ValueError, match="truncation_side"):
        train_word_tokenizer(["a"], truncation_side="middle")
    with pytest.raises(TypeError, match="texts"):
        train_word_tokenizer("a single string")


def test_word_tokenizer_on_real_messages_is_deterministic_and_round_trips(newsgroups, tmp_path):
    texts = list(clean_newsgroups(newsgroups["train"].select(range(300)), "headers")["text"])
    tok = train_word_tokenizer(texts, vocab_size=2000, max_length=64)
    again = train_word_tokenizer(texts, vocab_size=2000, max_length=64)
    assert tok.get_vocab() == again.get_vocab() and len(tok) == 2000
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    sample = texts[:8]
    kwargs = dict(truncation=True, padding="max_length")
    assert reloaded(sample, **kwargs) == tok(sample, **kwargs)
    assert reloaded.model_max_length == 64 and reloaded.truncation_side == "left"
    assert all(len(ids) == 64 for ids in tok(sample, **kwargs)["input_ids"])


def test_saved_text_cnn_loads_with_plain_transformers_in_a_fresh_process(tmp_path):
    # issue 13: the config carries auto_map and the code files lie beside the weights (register_for_auto_class), so
    # a process that never imports mbls_nlp loads the model with trust_remote_code=True.
    import json
    import os
    import subprocess
    import sys

    from mbls_nlp.models import TextCNNConfig, TextCNNForSequenceClassification

    torch.manual_seed(0)
    model = TextCNNForSequenceClassification(TextCNNConfig(vocab_size=50, embedding_dim=8, num_filters=4,
                                                           hidden_size=6, num_labels=3)).eval()  # fmt: skip
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"].endswith("TextCNNForSequenceClassification")
    assert {"modeling_text_cnn.py", "configuration_text_cnn.py"} <= set(os.listdir(tmp_path / "model"))
    input_ids = torch.randint(2, 50, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids=input_ids).logits
    torch.save(input_ids, tmp_path / "input_ids.pt")
    script = f"""
import sys, torch
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
assert "mbls_nlp" not in sys.modules, "mbls_nlp was imported"
with torch.no_grad():
    logits = model(input_ids=torch.load({str(tmp_path / "input_ids.pt")!r})).logits
torch.save(logits, {str(tmp_path / "logits.pt")!r})
print(type(model).__module__)
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)  # nothing on the path leads to this checkout's mbls_nlp
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mbls_nlp" not in result.stdout  # the class comes from the copied files, not from the package
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=0, atol=0)
