"""wsi_lab.models: the workshop VAE, tile classifiers, gated attention MIL, the encoder registry and
self-describing checkpoints (CPU, small sizes, random init; no weights are downloaded)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("timm")

from torch import nn  # noqa: E402

from wsi_lab.errors import CheckpointError, InvalidParameterError  # noqa: E402
from wsi_lab.models import (  # noqa: E402
    VAE,
    AttentionMIL,
    TileClassifier,
    build_encoder,
    build_model,
    encoder_info,
    load,
    load_weights,
    read_checkpoint,
    sample_bag,
    save_checkpoint,
    vae_loss,
)
from wsi_lab.models.checkpoint import check_compatible  # noqa: E402
from wsi_lab.models.encoders import ENCODERS  # noqa: E402

TINY_VIT = {"depth": 1, "embed_dim": 48, "num_heads": 2, "input_size": 28}


def test_vae_default_is_the_workshop_layout():
    vae = VAE()
    convs = [m for m in vae.encoder if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 32, (4, 4), (2, 2)), (32, 64, (4, 4), (2, 2)), (64, 128, (4, 4), (2, 2)), (128, 256, (4, 4), (2, 2))]
    enc = list(vae.encoder)
    assert isinstance(enc[enc.index(convs[2]) + 1], nn.BatchNorm2d)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in enc) == 1
    deconvs = [m for m in vae.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert [(d.in_channels, d.out_channels, d.kernel_size[0], d.stride[0]) for d in deconvs] == [
        (1024, 128, 5, 2), (128, 64, 5, 2), (64, 32, 6, 2), (32, 3, 6, 2)]
    dec = list(vae.decoder)
    assert isinstance(dec[dec.index(deconvs[1]) + 1], nn.BatchNorm2d) and isinstance(dec[-1], nn.Sigmoid)
    assert vae.flat_dim == 1024 and vae.fc_mu.in_features == 1024 and vae.fc_mu.out_features == 32
    assert vae.fc_logvar.out_features == 32 and (vae.fc.in_features, vae.fc.out_features) == (32, 1024)


def test_vae_forward_loss_and_deterministic_encode():
    torch.manual_seed(0)
    vae = VAE().eval()
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        recon, mu, logvar = vae(x)
    assert recon.shape == x.shape and mu.shape == logvar.shape == (4, 32)
    assert 0 <= float(recon.min()) and float(recon.max()) <= 1
    assert torch.equal(vae.encode(x), vae.encode(x)) and torch.allclose(vae.encode(x), mu)
    # forward samples: two passes differ, encode() does not
    assert not torch.equal(vae(x)[0], recon)
    loss, bce, kld = vae_loss(recon, x, mu, logvar)
    expected_bce = torch.nn.functional.binary_cross_entropy(recon, x, reduction="sum")
    expected_kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    assert torch.allclose(bce, expected_bce) and torch.allclose(kld, expected_kld)
    assert torch.allclose(loss, bce + kld) and float(kld) >= 0


@pytest.mark.parametrize("size,latent", [(128, 8), (96, 16)])
def test_vae_input_and_latent_size_configurable(size, latent):
    vae = VAE(input_size=size, latent_dim=latent)
    recon, mu, _ = vae(torch.rand(2, 3, size, size))
    assert recon.shape == (2, 3, size, size) and mu.shape == (2, latent)
    assert vae.flat_dim == 256 * (((((size - 4) // 2 + 1 - 4) // 2 + 1 - 4) // 2 + 1 - 4) // 2 + 1) ** 2
    with pytest.raises(InvalidParameterError, match="expects"):
        vae(torch.rand(1, 3, 64, 64))
    with pytest.raises(InvalidParameterError, match="multiple of 16"):
        VAE(input_size=70)


def test_vae_uses_no_cuda_only_calls():
    import inspect

    import wsi_lab.models.vae as m

    src = inspect.getsource(m)
    assert "cuda" not in src.replace("no CUDA-only", "") and "randn_like" in src


def test_small_cnn_is_the_keras_cifar10_net():
    clf = TileClassifier("small_cnn", classes=["LUAD", "LUSC", "normal"], input_size=32)
    convs = [m for m in clf.backbone.features if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.padding) for c in convs] == [(32, (1, 1)), (32, (0, 0)), (64, (1, 1)), (64, (0, 0))]
    dense = [m for m in clf.backbone.classifier if isinstance(m, nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(64 * 6 * 6, 512), (512, 3)]
    drops = [m.p for m in clf.backbone.modules() if isinstance(m, nn.Dropout)]
    assert drops == [0.25, 0.25, 0.5]
    assert clf(torch.rand(2, 3, 32, 32)).shape == (2, 3) and clf.classes == ["LUAD", "LUSC", "normal"]
    with pytest.raises(InvalidParameterError, match=r"\(N, 3, 32, 32\)"):
        clf(torch.rand(1, 3, 64, 64))
    with pytest.raises(InvalidParameterError, match="at least 2 classes"):
        TileClassifier("small_cnn", num_classes=1)


@pytest.mark.parametrize("name", ["resnet18", "timm:resnet10t"])
def test_standard_backbones_have_n_classes(name):
    clf = TileClassifier(name, num_classes=3, input_size=64)
    assert clf(torch.rand(2, 3, 64, 64)).shape == (2, 3)
    assert clf.config["mean"] == pytest.approx([0.485, 0.456, 0.406], abs=1e-3)
    with pytest.raises(InvalidParameterError, match="unknown"):
        TileClassifier("vgg_nonexistent", num_classes=2)


def test_resnet50_head_size():
    clf = TileClassifier("resnet50", num_classes=4, input_size=64)
    assert clf.backbone.fc.out_features == 4 and clf.backbone.fc.in_features == 2048


def test_attention_mil_gated_attention_and_mask():
    torch.manual_seed(0)
    mil = AttentionMIL(in_dim=16, num_classes=3, hidden_dim=32, attention_dim=8).eval()
    bags = torch.randn(2, 10, 16)
    with torch.no_grad():
        logits, att = mil(bags)
    assert logits.shape == (2, 3) and att.shape == (2, 10)
    assert torch.allclose(att.sum(1), torch.ones(2)) and float(att.min()) > 0
    # the gated score by hand: w^T (tanh(V h) * sigmoid(U h))
    h = mil.embed(bags[0])
    scores = mil.attention_w(torch.tanh(mil.attention_v[0](h)) * torch.sigmoid(mil.attention_u[0](h))).squeeze(-1)
    assert torch.allclose(att[0], torch.softmax(scores, 0), atol=1e-6)
    # padded tiles get zero attention and do not change the result
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[:, 10:] = False
    padded = torch.cat([bags, torch.randn(2, 2, 16) * 100], 1)
    logits_p, att_p = mil(padded, mask)
    assert torch.allclose(logits_p, logits, atol=1e-5) and float(att_p[:, 10:].abs().max()) == 0
    one_logits, one_att = mil(bags[1])
    assert torch.allclose(one_logits[0], logits[1], atol=1e-6) and one_att.shape == (1, 10)


def test_sample_bag_is_reproducible_and_capped():
    a = sample_bag(100, 10, seed=3, key="slide-1", epoch=2)
    assert len(a) == 10 and len(set(a.tolist())) == 10 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, sample_bag(100, 10, seed=3, key="slide-1", epoch=2))
    assert not np.array_equal(a, sample_bag(100, 10, seed=3, key="slide-1", epoch=3))
    assert not np.array_equal(a, sample_bag(100, 10, seed=3, key="slide-2", epoch=2))
    assert np.array_equal(sample_bag(100, 10, 3, "s"), sample_bag(100, 10, 3, "s"))
    assert np.array_equal(sample_bag(5, 10, 0, "s"), np.arange(5))


def test_encoder_registry_records_what_a_feature_file_needs():
    h = ENCODERS["h-optimus-0"]
    assert (h.arch, h.input_size, h.mpp, h.pooling, h.dim) == ("vit_giant_patch14_reg4_dinov2", 224, 0.5, "cls", 1536)
    assert h.kwargs["init_values"] == 1e-5 and h.kwargs["mlp_layer"] == "SwiGLUPacked" and h.kwargs["act_layer"] == "SiLU"
    assert h.mean == pytest.approx((0.707223, 0.578729, 0.703617)) and h.std == pytest.approx((0.211883, 0.230117, 0.177517))
    with pytest.raises(InvalidParameterError, match="unknown encoder"):
        encoder_info("no-such-encoder")
    assert encoder_info("h-optimus-0", depth=2).kwargs["depth"] == 2
    with pytest.raises(InvalidParameterError, match="h-optimus-0"):
        build_encoder("h-optimus-0", **{**TINY_VIT, "embed_dim": 64})  # SwiGLU needs an even hidden size


def test_hoptimus0_code_path_with_a_tiny_vit_and_a_saved_checkpoint(tmp_path):
    """The H-optimus-0 architecture (registers, SwiGLU, LayerScale) at test size: save random weights,
    load them back through the same path with the SHA-256 check."""
    import timm

    from wsi_lab.io import file_sha256

    torch.manual_seed(0)
    enc = build_encoder("h-optimus-0", **TINY_VIT)
    vit = enc.backbone
    assert vit.num_prefix_tokens == 5  # CLS + 4 registers
    assert isinstance(vit.blocks[0].mlp, timm.layers.GluMlp) and isinstance(vit.blocks[0].mlp.act, nn.SiLU)
    assert float(vit.blocks[0].ls1.gamma[0]) == pytest.approx(1e-5)
    x = torch.rand(3, 3, 28, 28)
    feats = enc.eval()(x)
    assert feats.shape == (3, 48) and enc.info.dim == 48
    weights = tmp_path / "hoptimus_tiny.pt"
    torch.save(vit.state_dict(), weights)
    digest = file_sha256(weights)
    torch.manual_seed(1)
    again = build_encoder("h-optimus-0", weights=weights, sha256=digest, **TINY_VIT).eval()
    assert torch.allclose(again(x), feats, atol=1e-6)
    assert again.metadata()["weights_sha256"] == digest and again.metadata()["mpp"] == 0.5
    with pytest.raises(CheckpointError, match="SHA-256"):
        build_encoder("h-optimus-0", weights=weights, sha256="0" * 64, **TINY_VIT)
    with pytest.raises(CheckpointError, match="another model|do not fit"):
        build_encoder("h-optimus-0", weights=weights, **{**TINY_VIT, "embed_dim": 96})
    both = build_encoder("h-optimus-0", weights=weights, pooling="cls+mean", **TINY_VIT).eval()
    out = both(x)
    assert out.shape == (3, 96) and torch.allclose(out[:, :48], feats, atol=1e-6)


def test_weights_are_never_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"w": Evil()}))
    clf = TileClassifier("small_cnn", num_classes=2)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_weights(clf.backbone, bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(clf.backbone, tmp_path / "missing.pt")


def test_pretrained_backbone_weights_get_a_new_head(tmp_path):
    src = TileClassifier("resnet18", num_classes=1000, input_size=64)
    path = tmp_path / "imagenet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.backbone.state_dict().items()}}, path)
    dst = TileClassifier("resnet18", num_classes=3, input_size=64)
    skipped = load_weights(dst.backbone, path)
    assert sorted(skipped) == ["fc.bias", "fc.weight"]
    assert torch.equal(dst.backbone.conv1.weight, src.backbone.conv1.weight)


@pytest.mark.parametrize("config", [
    {"name": "vae", "input_size": 64, "latent_dim": 8},
    {"name": "small_cnn", "classes": ["LUAD", "LUSC", "normal"], "input_size": 32},
    {"name": "abmil", "in_dim": 12, "classes": ["neg", "pos"]},
])
def test_checkpoint_rebuilds_the_model_with_no_other_input(tmp_path, config):
    torch.manual_seed(0)
    model = build_model(config).eval()
    path = save_checkpoint(tmp_path / "ckpt" / "m.pt", model, epoch=3)
    assert not list(path.parent.glob("*.part"))
    again = load(path)
    assert type(again) is type(model) and again.config == model.config and not again.training
    assert getattr(again, "classes", []) == getattr(model, "classes", [])
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert read_checkpoint(path)["epoch"] == 3


def test_checkpoint_of_another_model_or_tile_size_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "vae.pt", VAE(input_size=64))
    with pytest.raises(CheckpointError, match="input_size is 64 but 128"):
        load(path, expect={"name": "vae", "input_size": 128})
    with pytest.raises(CheckpointError, match="name is 'vae' but 'small_cnn'"):
        load(path, expect={"name": "small_cnn"})
    with pytest.raises(CheckpointError, match="has no 'num_classes'"):
        check_compatible(VAE().config, {"num_classes": 2})
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a WSI Lab checkpoint"):
        load(tmp_path / "plain.pt")
    (tmp_path / "trunc.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load(tmp_path / "trunc.pt")
    with pytest.raises(InvalidParameterError, match="unknown model"):
        build_model("nope")
