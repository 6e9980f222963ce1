"""minBERT matches Hugging Face's BertModel on the same weights, to float32 precision."""

from __future__ import annotations

import pytest
import torch

from mops.minbert import BertConfig, BertModel, BertTokenizer, save_pretrained

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Short.",
    "Multitask fine-tuning shares some layers and keeps others apart, which saves memory.",
    "Naïve café owners say résumé fluently",
]
PAIRS = ["A fox jumps.", "Tiny", "Sharing layers saves memory.", "Something else entirely"]


def _hf_outputs(folder, batch):
    reference = transformers.BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    with torch.no_grad():
        out = reference(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, token_type_ids=batch.token_type_ids
        )
    return out.last_hidden_state, out.pooler_output


def _assert_parity(model, folder, batch):
    with torch.no_grad():
        ours = model(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    hidden, pooled = _hf_outputs(folder, batch)
    real = batch.attention_mask.bool()  # compare non-padding positions only
    torch.testing.assert_close(ours["last_hidden_state"][real], hidden[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours["pooler_output"], pooled, rtol=0, atol=1e-5)


def test_embedded_checkpoint_matches_reference(minilm_dir):
    tokenizer = BertTokenizer.from_pretrained(minilm_dir)
    batch = tokenizer(SENTENCES, PAIRS)
    assert (batch.attention_mask == 0).any(), "the batch must contain padding"
    model = BertModel.from_pretrained(str(minilm_dir), backend="torch")
    _assert_parity(model, minilm_dir, batch)


def test_default_name_is_embedded_checkpoint(minilm_dir):
    by_name = BertModel.from_pretrained("minilm")
    by_default = BertModel.from_pretrained()
    assert by_name.config == by_default.config
    assert by_name.config.hidden_size == 384 and by_name.config.num_hidden_layers == 6
    for (name, a), (_, b) in zip(by_name.state_dict().items(), by_default.state_dict().items()):
        assert torch.equal(a, b), name


def test_random_small_config_saved_and_reloaded_matches_reference(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=120, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=100,
        max_position_embeddings=64,
    )
    model = BertModel(config).eval()
    save_pretrained(model, tmp_path)
    reloaded = BertModel.from_pretrained(str(tmp_path), backend="torch")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name

    generator = torch.Generator().manual_seed(1)
    lengths = torch.tensor([17, 5, 1, 11])
    input_ids = torch.randint(1, 120, (4, 17), generator=generator)
    mask = (torch.arange(17)[None, :] < lengths[:, None]).long()
    input_ids = input_ids * mask
    token_types = (torch.arange(17)[None, :] >= 3).long() * mask
    batch = type("B", (), dict(input_ids=input_ids, attention_mask=mask, token_type_ids=token_types))
    _assert_parity(reloaded, tmp_path, batch)


def test_pieces_compose_to_the_whole_model(minilm_dir):
    model = BertModel.from_pretrained(backend="torch")
    batch = BertTokenizer.from_pretrained()(SENTENCES)
    with torch.no_grad():
        whole = model(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        hidden = model.embeddings(batch.input_ids, batch.token_type_ids)
        for layer in model.encoder.layer:
            hidden = layer(hidden, batch.attention_mask)
        pooled = model.pooler(hidden)
    assert torch.equal(hidden, whole["last_hidden_state"])
    assert torch.equal(pooled, whole["pooler_output"])


def test_gradients_match_reference(minilm_dir):
    """Training-mode gradients (dropout off) agree with Hugging Face's, parameter by parameter.

    Both run in float64 so the comparison is not blurred by float32 summation order."""
    batch = BertTokenizer.from_pretrained()(SENTENCES[:3], PAIRS[:3])
    ours = BertModel.from_pretrained(backend="torch").double()
    reference = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager").double()
    for model in (ours, reference):
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    for layer in ours.encoder.layer:
        layer.attention.self.dropout_p = 0.0

    def loss_of(out_hidden, out_pooled):
        real = batch.attention_mask.bool()
        return (out_hidden[real] ** 2).mean() + out_pooled.sum()

    out = ours(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    loss_of(out["last_hidden_state"], out["pooler_output"]).backward()
    ref = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask, token_type_ids=batch.token_type_ids)
    loss_of(ref.last_hidden_state, ref.pooler_output).backward()
    ref_params = dict(reference.named_parameters())
    for name, param in ours.named_parameters():
        expected = ref_params[name].grad
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, expected, rtol=1e-7, atol=1e-10, msg=lambda m: f"{name}: {m}")


def test_padding_does_not_change_real_positions():
    model = BertModel.from_pretrained(backend="torch")
    tokenizer = BertTokenizer.from_pretrained()
    alone = tokenizer(["a sentence on its own"])
    padded = tokenizer(["a sentence on its own", "a much longer sentence that forces padding onto the first one"])
    with torch.no_grad():
        a = model(alone.input_ids, alone.attention_mask)["last_hidden_state"][0]
        b = model(padded.input_ids, padded.attention_mask)["last_hidden_state"][0, : a.shape[0]]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_dropout_active_only_in_training():
    model = BertModel.from_pretrained(backend="torch")
    batch = BertTokenizer.from_pretrained()(SENTENCES)
    model.eval()
    with torch.no_grad():
        first = model(batch.input_ids, batch.attention_mask)["pooler_output"]
        second = model(batch.input_ids, batch.attention_mask)["pooler_output"]
        assert torch.equal(first, second)
        model.train()
        noisy = model(batch.input_ids, batch.attention_mask)["pooler_output"]
    assert not torch.allclose(first, noisy)


def test_bad_backend_and_too_long_input():
    with pytest.raises(ValueError, match="backend"):
        BertModel(BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64), backend="cuda")
    model = BertModel(BertConfig(vocab_size=50, num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=8))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.ones(1, 9, dtype=torch.long))
