"""Tests of the CIFAR-style ResNet (He et al. 2016, sec. 4.2; the MbLS paper's CIFAR networks) as an HF model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from mbls_nlp.models import CifarResNetConfig, CifarResNetForImageClassification, CifarResNetModel
from mbls_nlp.temperature import classification_head, temperature_folded


def tiny_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    defaults = dict(embedding_size=4, hidden_sizes=[4, 8], depths=[1, 1], num_labels=3)
    return CifarResNetForImageClassification(CifarResNetConfig(**{**defaults, **kwargs}))


def n_parameters(model):
    return sum(p.numel() for p in model.parameters())


def test_resnet20_has_he_et_al_parameter_count_plus_its_projections():
    model = CifarResNetForImageClassification(CifarResNetConfig.from_preset("resnet20"))
    assert model.config.depth == 20 and model.config.num_labels == 10
    # He et al.'s ResNet-20 (option A, zero-padding shortcuts) has 269,722 parameters for 10 classes (the 0.27M of
    # their table 6). Option B adds two 1x1 projections with batch norm: 16*32 + 2*32 = 576 and 32*64 + 2*64 = 2176.
    assert n_parameters(model) == 269_722 + 576 + 2_176


def test_resnet50_preset_has_the_imagenet_resnet50_parameters_with_a_3x3_stem():
    model = CifarResNetForImageClassification(CifarResNetConfig.from_preset("resnet50"))
    assert model.config.depth == 50 and model.config.hidden_size == 2048
    # torchvision's resnet50 has 25,557,032 parameters; replacing its 1000-class head (2048*1000 + 1000) by a
    # 10-class one (2048*10 + 10) and its 7x7 stem (3*64*49) by a 3x3 one (3*64*9) gives the CIFAR count.
    assert n_parameters(model) == 25_557_032 - 2_049_000 + 20_490 - 3 * 64 * 49 + 3 * 64 * 9


@pytest.mark.parametrize("preset, depths", [("resnet32", [5, 5, 5]), ("resnet56", [9, 9, 9]), ("resnet110", [18] * 3)])
def test_depth_presets_follow_6n_plus_2(preset, depths):
    config = CifarResNetConfig.from_preset(preset, num_labels=100)
    assert config.depths == depths and config.depth == int(preset[len("resnet") :]) and config.num_labels == 100


def test_the_stem_keeps_the_resolution_and_each_later_stage_halves_it():
    model = CifarResNetModel(CifarResNetConfig(depths=[1, 1, 1])).eval()
    stem = model.embedder[0][0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    out = model(torch.randn(2, 3, 32, 32))
    assert out.last_hidden_state.shape == (2, 64, 8, 8)  # 32 -> 32 -> 16 -> 8
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state.mean(dim=(2, 3)))
    bottleneck = CifarResNetModel(CifarResNetConfig(embedding_size=8, hidden_sizes=[4, 8], depths=[1, 1],
                                                    layer_type="bottleneck")).eval()  # fmt: skip
    assert bottleneck(torch.randn(1, 3, 32, 32)).last_hidden_state.shape == (1, 32, 16, 16)  # 8 * expansion 4


def test_logits_loss_and_tuple_outputs():
    model = tiny_model().eval()
    pixels, labels = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 1, 0])
    out = model(pixels, labels=labels)
    assert out.logits.shape == (5, 3)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    loss, logits = model(pixels, labels=labels, return_dict=False)
    torch.testing.assert_close(logits, out.logits)
    assert model(pixels, return_dict=False)[0].shape == (5, 3)
    # The logits are the linear classifier of the pooled features: the head temperature folding uses.
    assert classification_head(model) is model.classifier
    pooled = model.cifar_resnet(pixels).pooler_output
    torch.testing.assert_close(out.logits, pooled @ model.classifier.weight.T + model.classifier.bias)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(depths=[1, 1], hidden_sizes=[4]), "hidden_sizes"),
        (dict(depths=[]), "depths"),
        (dict(hidden_sizes=[4, 0, 8]), "hidden_sizes"),
        (dict(layer_type="wide"), "layer_type"),
        (dict(embedding_size=0), "embedding_size"),
        (dict(num_channels=True), "num_channels"),
    ],
)
def test_config_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CifarResNetConfig(**kwargs)


def test_bad_preset_and_bad_input_name_the_argument():
    with pytest.raises(ValueError, match=r"`name` must be one of \('resnet20'"):
        CifarResNetConfig.from_preset("resnet18")
    with pytest.raises(ValueError, match="pixel_values"):
        tiny_model()(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="num_channels=3"):
        tiny_model()(torch.randn(1, 1, 32, 32))


def test_initialisation_is_he_fan_out_and_identity_batch_norm():
    model = CifarResNetForImageClassification(CifarResNetConfig(embedding_size=64, depths=[1, 1, 1]))
    conv = model.cifar_resnet.embedder[0][0].weight  # (64, 3, 3, 3): fan_out = 64 * 9, std = sqrt(2 / fan_out)
    assert conv.std().item() == pytest.approx(np.sqrt(2 / (64 * 9)), rel=0.1)
    bn = model.cifar_resnet.embedder[0][1]
    assert torch.equal(bn.weight, torch.ones(64)) and torch.equal(bn.bias, torch.zeros(64))


def test_a_few_sgd_steps_reduce_the_loss():
    # The recipe's optimiser (SGD, lr 0.1, momentum 0.9) on 12 fixed noise images of 3 classes.
    model = tiny_model(embedding_size=16, hidden_sizes=[16, 32]).train()
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(12, 3, 32, 32, generator=generator)
    labels = torch.arange(12) % 3
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(20):
        loss = model(pixels, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # From about ln 3 = 1.10 (random head) the model starts memorising the 12 images: the loss falls to under half.
    assert losses[-1] < 0.5 * losses[0], losses


def test_auto_classes_and_save_pretrained_round_trip(tmp_path):
    assert isinstance(AutoConfig.for_model("cifar_resnet"), CifarResNetConfig)
    model = tiny_model(id2label={0: "cat", 1: "dog", 2: "ship"}).train()
    model(torch.randn(8, 3, 32, 32))  # moves the batch norm running statistics away from their initial values
    model.eval().save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is CifarResNetForImageClassification
    assert reloaded.config.id2label == {0: "cat", 1: "dog", 2: "ship"} and reloaded.config.depths == [1, 1]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(reloaded(pixels).logits, model(pixels).logits, rtol=0, atol=0)
    assert type(AutoModel.from_pretrained(tmp_path)) is CifarResNetModel


def test_saved_cifar_resnet_loads_and_is_calibrated_with_plain_transformers_in_a_fresh_process(tmp_path):
    # issue 13: the config carries auto_map and the code files lie beside the weights (register_for_auto_class), so
    # a process that never imports mbls_nlp loads the model with trust_remote_code=True, in a pipeline too; with the
    # temperature folded in, the pipeline's scores are softmax(logits / T) of the unfolded model.
    from PIL import Image
    from transformers.models.vit import ViTImageProcessorPil

    model = tiny_model(num_labels=4).eval()
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"image{i}.png"))
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
    with torch.no_grad():
        raw = model(**processor([Image.open(p) for p in paths], return_tensors="pt")).logits.double()
    temperature = 0.4
    with temperature_folded(model, temperature):
        model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageClassification"].endswith("CifarResNetForImageClassification")
    assert {"modeling_cifar_resnet.py", "configuration_cifar_resnet.py"} <= set(os.listdir(tmp_path / "model"))
    script = f"""
import json, sys
from transformers import pipeline
classifier = pipeline("image-classification", model={str(tmp_path / "model")!r}, trust_remote_code=True, top_k=None,
                      device="cpu")
assert "mbls_nlp" not in sys.modules, "mbls_nlp was imported"
print(type(classifier.model).__module__)
print(json.dumps(classifier({paths!r})))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)  # nothing on the path leads to this checkout's mbls_nlp
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    module, scores = result.stdout.strip().splitlines()[-2:]
    assert "mbls_nlp" not in module  # the class comes from the copied files, not from the package
    expected = torch.softmax(raw / temperature, dim=-1)
    for row_scores, row in zip(json.loads(scores), expected):
        by_label = {s["label"]: s["score"] for s in row_scores}
        assert [by_label[model.config.id2label[i]] for i in range(4)] == pytest.approx(row.tolist(), abs=1e-6)
