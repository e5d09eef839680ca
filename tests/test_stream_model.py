"""Qwen3ForGuardModel: the official Stream checkpoint format without remote code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import DynamicCache, Qwen3Config, Qwen3ForCausalLM  # noqa: E402

from qwen3guard.errors import ModelFormatError  # noqa: E402
from qwen3guard.stream.modeling import (  # noqa: E402
    Qwen3ForGuardModel,
    check_gen_checkpoint,
    label_maps,
    load_stream_model,
)

RISKS = ["Safe", "Unsafe", "Controversial"]
RESPONSE_CATS = ["Violent", "Sexual Content or Sexual Acts", "Suicide & Self-Harm",
                 "Politically Sensitive Topics", "PII", "Copyright Violation",
                 "Non-violent Illegal Acts", "Unethical Acts"]
QUERY_CATS = [*RESPONSE_CATS, "Jailbreak"]
HEAD_WEIGHTS = [f"{p}{n}.weight" for p in ("", "query_") for n in (
    "risk_level_category_pre", "risk_level_category_layernorm", "risk_level_head",
    "category_head")]


def _official_config(maps: bool = True) -> dict:
    """A config.json as the hub's Stream checkpoints ship it (scaled down)."""
    cfg = {
        "architectures": ["Qwen3ForGuardModel"],
        "auto_map": {"AutoModel": "modeling_qwen3_guard.Qwen3ForGuardModel"},
        "model_type": "qwen3",
        "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 64, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": True, "eos_token_id": 2,
        "guard_inner_size": 32, "num_risk_level": 3, "num_category": 8,
        "num_query_risk_level": 3, "num_query_category": 9,
    }
    if maps:
        cfg["response_risk_level_map"] = {str(i): v for i, v in enumerate(RISKS)}
        cfg["response_category_map"] = {str(i): v for i, v in enumerate(RESPONSE_CATS)}
        cfg["query_risk_level_map"] = {str(i): v for i, v in enumerate(RISKS)}
        cfg["query_category_map"] = {str(i): v for i, v in enumerate(QUERY_CATS)}
    return cfg


def _random_model(seed: int = 0) -> Qwen3ForGuardModel:
    torch.manual_seed(seed)
    cfg = Qwen3Config(**{k: v for k, v in _official_config().items() if k != "auto_map"})
    model = Qwen3ForGuardModel(cfg).eval()
    with torch.no_grad():  # heads away from their init, so the comparisons mean something
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Qwen3ForGuardModel, Path, Path]:
    model = _random_model()
    root = tmp_path_factory.mktemp("stream")
    single, sharded = root / "single", root / "sharded"
    model.save_pretrained(single)
    model.save_pretrained(sharded, max_shard_size="200KB")
    for d in (single, sharded):  # the official config.json, remote-code entry included
        (d / "config.json").write_text(json.dumps(_official_config()))
    return model, single, sharded


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_weight_names_are_the_official_ones() -> None:
    names = set(_random_model().state_dict())
    assert set(HEAD_WEIGHTS) <= names
    assert all(n in HEAD_WEIGHTS or n.startswith("model.") for n in names)
    assert "model.embed_tokens.weight" in names and "model.norm.weight" in names


@pytest.mark.parametrize("kind", ["single", "sharded"])
def test_loads_single_and_sharded(saved, kind: str) -> None:
    model, single, sharded = saved
    path = single if kind == "single" else sharded
    if kind == "sharded":
        assert len(list(path.glob("*.safetensors"))) > 1
        assert (path / "model.safetensors.index.json").is_file()
    loaded = Qwen3ForGuardModel.from_pretrained(path)
    _same_weights(model, loaded)
    via_loader = load_stream_model(path, device="cpu", dtype=torch.float32)
    _same_weights(model, via_loader)
    assert not via_loader.training
    assert via_loader.config.guard_inner_size == 32
    ids = torch.randint(0, 300, (2, 9))
    a, b = model(input_ids=ids), via_loader(input_ids=ids)
    for name in ("risk_level_logits", "category_logits", "query_risk_level_logits",
                 "query_category_logits"):
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-6)


def test_output_shapes(saved) -> None:
    model = saved[0]
    out = model(input_ids=torch.randint(0, 300, (2, 7)))
    assert out.risk_level_logits.shape == (2, 7, 3)
    assert out.category_logits.shape == (2, 7, 8)
    assert out.query_risk_level_logits.shape == (2, 7, 3)
    assert out.query_category_logits.shape == (2, 7, 9)


@pytest.mark.parametrize("split", [1, 5, 17])
def test_incremental_decoding_equals_the_full_forward(saved, split: int) -> None:
    model = saved[0]
    torch.manual_seed(1)
    ids = torch.randint(0, 300, (1, 24))
    names = ("risk_level_logits", "category_logits", "query_risk_level_logits",
             "query_category_logits")
    with torch.no_grad():
        full = model(input_ids=ids)
        cache = DynamicCache(config=model.config)
        first = model(input_ids=ids[:, :split], past_key_values=cache, use_cache=True)
        assert first.past_key_values is not None
        rest = model(input_ids=ids[:, split:], past_key_values=first.past_key_values,
                     use_cache=True)
        assert rest.past_key_values.get_seq_length() == ids.shape[1]
        for name in names:
            got = torch.cat([getattr(first, name), getattr(rest, name)], dim=1)
            assert torch.allclose(got, getattr(full, name), atol=1e-4, rtol=0), name
        # One token at a time, as a streaming session feeds them.
        cache = None
        steps = []
        for i in range(ids.shape[1]):
            out = model(input_ids=ids[:, i:i + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.risk_level_logits)
        assert torch.allclose(torch.cat(steps, dim=1), full.risk_level_logits, atol=1e-4, rtol=0)


def test_incremental_decoding_on_the_tiny_checkpoint(stream_path: str) -> None:
    model = load_stream_model(stream_path)
    torch.manual_seed(2)
    ids = torch.randint(0, model.config.vocab_size, (1, 300))
    with torch.no_grad():
        full = model(input_ids=ids)
        first = model(input_ids=ids[:, :200], use_cache=True)
        rest = model(input_ids=ids[:, 200:], past_key_values=first.past_key_values, use_cache=True)
    for name in ("risk_level_logits", "category_logits", "query_risk_level_logits",
                 "query_category_logits"):
        got = torch.cat([getattr(first, name), getattr(rest, name)], dim=1)
        assert torch.allclose(got, getattr(full, name), atol=1e-4, rtol=0), name


def test_label_maps_from_the_config_and_fallback() -> None:
    official = Qwen3Config(**_official_config())
    maps = label_maps(official)
    assert list(maps["response_risk_level"]) == RISKS
    assert list(maps["response_category"]) == RESPONSE_CATS
    assert list(maps["query_category"]) == QUERY_CATS
    bare = Qwen3Config(**_official_config(maps=False))
    assert {k: list(v) for k, v in label_maps(bare).items()} == {
        k: list(v) for k, v in maps.items()}
    custom = _official_config()
    custom["response_risk_level_map"] = {"0": "Safe", "1": "Controversial", "2": "Unsafe"}
    assert list(label_maps(Qwen3Config(**custom))["response_risk_level"]) == [
        "Safe", "Controversial", "Unsafe"]


def _gen_checkpoint(root: Path) -> Path:
    cfg = Qwen3Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                      tie_word_embeddings=True)
    path = root / "gen"
    Qwen3ForCausalLM(cfg).save_pretrained(path)
    return path


def test_a_gen_checkpoint_is_refused_by_the_stream_loader(tmp_path: Path, gen_path: str) -> None:
    for path in (_gen_checkpoint(tmp_path), gen_path):
        with pytest.raises(ModelFormatError, match="Gen") as info:
            load_stream_model(path)
        assert "Qwen3ForCausalLM" in str(info.value) and "Qwen3ForGuardModel" in str(info.value)


def test_a_stream_checkpoint_is_refused_by_the_gen_check(saved, stream_path: str,
                                                         gen_path: str) -> None:
    for path in (saved[1], saved[2], stream_path):
        with pytest.raises(ModelFormatError, match="Stream"):
            check_gen_checkpoint(str(path))
    check_gen_checkpoint(gen_path)  # a Gen checkpoint passes


def test_guard_config_without_maps_still_loads(tmp_path: Path, saved) -> None:
    model = saved[0]
    path = tmp_path / "nomaps"
    model.save_pretrained(path)
    (path / "config.json").write_text(json.dumps(_official_config(maps=False)))
    loaded = load_stream_model(path)
    _same_weights(model, loaded)
    assert list(label_maps(loaded.config)["query_category"]) == QUERY_CATS


def test_one_labels_module() -> None:
    """The label orders live in qwen3guard.stream.labels (torch-free); the model module
    re-exports them, and resolve_labels gives the typed labels of a config or a config dict."""
    import subprocess
    import sys

    from qwen3guard import Category, RiskLevel
    from qwen3guard.stream import labels, modeling

    assert modeling.label_maps is labels.label_maps
    assert tuple(RISKS) == labels.RISK_LEVELS
    assert tuple(QUERY_CATS) == labels.QUERY_CATEGORIES
    assert labels.RESPONSE_CATEGORY_ORDER[0] is Category.VIOLENT
    got = labels.resolve_labels(_official_config())
    assert got.risk == (RiskLevel.SAFE, RiskLevel.UNSAFE, RiskLevel.CONTROVERSIAL)
    assert got.query_category[-1] is Category.JAILBREAK
    assert labels.resolve_labels({}) == labels.Labels(
        labels.RISK_ORDER, labels.RESPONSE_CATEGORY_ORDER, labels.RISK_ORDER,
        labels.QUERY_CATEGORY_ORDER,
    )
    code = "import sys, qwen3guard.stream.labels; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
