"""Tiny Hugging Face transformers models (random weights, built from their config classes, no download)
and their example inputs, for the torch.export tests and tools/sweep_hf.py.

Sizes follow issue 12: hidden 64, 2 layers, 4 heads, 2 key/value heads where the config has them.
"""
from __future__ import annotations

import functools

import torch

from real_zoos import import_torchvision

COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              vocab_size=100, max_position_embeddings=64)
GQA = dict(COMMON, num_key_value_heads=2)


@functools.lru_cache(None)
def transformers():
    import_torchvision()   # transformers imports torchvision when it is installed
    import transformers as tr
    tr.logging.set_verbosity_error()
    return tr


def _ids(batch=2, seq=16, vocab=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g)


def _pixels(batch=2, size=32, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _text(config, model, **extra):
    def build(seed=0, batch=2, seq=16):
        return {"input_ids": _ids(batch, seq, seed=seed)}
    return config, model, extra, build


def _encdec(config, model, **extra):
    def build(seed=0, batch=2, seq=16):
        return {"input_ids": _ids(batch, seq, seed=seed), "decoder_input_ids": _ids(batch, seq // 2, seed=seed + 1)}
    return config, model, extra, build


def _vision(config, model, size=32, **extra):
    def build(seed=0, batch=2, seq=None):
        return {"pixel_values": _pixels(batch, size, seed)}
    return config, model, extra, build


def _text_image(config, model, **extra):
    def build(seed=0, batch=2, seq=16):
        return {"input_ids": _ids(batch, seq, seed=seed), "pixel_values": _pixels(batch, 32, seed)}
    return config, model, extra, build


def _audio(config, model, **extra):
    def build(seed=0, batch=2, seq=16):
        return {"input_values": torch.randn(batch, 50 * seq, generator=torch.Generator().manual_seed(seed))}
    return config, model, extra, build


def _speech(config, model, **extra):
    def build(seed=0, batch=2, seq=16):
        g = torch.Generator().manual_seed(seed)
        return {"input_features": torch.randn(batch, 16, 64, generator=g),
                "decoder_input_ids": _ids(batch, seq // 2, seed=seed + 1)}
    return config, model, extra, build


#: name -> (config class, model class, config overrides, inputs(seed, batch, seq) -> kwargs)
ARCHS = {
    "llama": _text("LlamaConfig", "LlamaForCausalLM", **GQA),
    "qwen2": _text("Qwen2Config", "Qwen2ForCausalLM", **GQA),
    "mistral": _text("MistralConfig", "MistralForCausalLM", **GQA, sliding_window=8),
    "gemma2": _text("Gemma2Config", "Gemma2ForCausalLM", **GQA, head_dim=16, sliding_window=8),
    "phi3": _text("Phi3Config", "Phi3ForCausalLM", **GQA, pad_token_id=0),
    "mixtral": _text("MixtralConfig", "MixtralForCausalLM", **GQA, num_local_experts=4, num_experts_per_tok=2),
    "gpt2": _text("GPT2Config", "GPT2LMHeadModel", n_embd=64, n_layer=2, n_head=4, n_inner=128, vocab_size=100,
                  n_positions=64),
    "opt": _text("OPTConfig", "OPTForCausalLM", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 ffn_dim=128, vocab_size=100, max_position_embeddings=64, word_embed_proj_dim=64),
    "bloom": _text("BloomConfig", "BloomForCausalLM", hidden_size=64, n_layer=2, n_head=4, vocab_size=100),
    "bert": _text("BertConfig", "BertForSequenceClassification", **COMMON),
    "albert": _text("AlbertConfig", "AlbertModel", **COMMON, embedding_size=32),
    "distilbert": _text("DistilBertConfig", "DistilBertModel", dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                        vocab_size=100, max_position_embeddings=64),
    "t5": _text("T5Config", "T5EncoderModel", d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                vocab_size=100),
    "bart": _encdec("BartConfig", "BartModel", d_model=64, encoder_layers=2, decoder_layers=2,
                    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                    decoder_ffn_dim=128, vocab_size=100, max_position_embeddings=64),
    "vit": _vision("ViTConfig", "ViTForImageClassification", hidden_size=64, num_hidden_layers=2,
                   num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8),
    "convnext": _vision("ConvNextConfig", "ConvNextForImageClassification", hidden_sizes=[32, 64], depths=[1, 1],
                        num_stages=2),
    "resnet": _vision("ResNetConfig", "ResNetForImageClassification", hidden_sizes=[32, 64], depths=[1, 1],
                      embedding_size=16, layer_type="bottleneck"),
}

#: more architectures for tools/sweep_hf.py (not in the test suite)
MORE = {
    "distilbert": _text("DistilBertConfig", "DistilBertModel", dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                        vocab_size=100, max_position_embeddings=64),
    "roberta": _text("RobertaConfig", "RobertaForMaskedLM", **COMMON),
    "electra": _text("ElectraConfig", "ElectraModel", **COMMON, embedding_size=32),
    "deberta_v2": _text("DebertaV2Config", "DebertaV2Model", **COMMON, relative_attention=True,
                        pos_att_type=["p2c", "c2p"], position_buckets=32),
    "gpt_neox": _text("GPTNeoXConfig", "GPTNeoXForCausalLM", **COMMON),
    "falcon": _text("FalconConfig", "FalconForCausalLM", hidden_size=64, num_hidden_layers=2,
                    num_attention_heads=4, vocab_size=100, multi_query=True, parallel_attn=True),
    "qwen3": _text("Qwen3Config", "Qwen3ForCausalLM", **GQA, head_dim=16),
    "gemma3": _text("Gemma3TextConfig", "Gemma3ForCausalLM", **GQA, head_dim=16, sliding_window=8),
    "mixtral": ARCHS["mixtral"],
    "opt": ARCHS["opt"],
    "whisper": _speech("WhisperConfig", "WhisperModel", d_model=64, encoder_layers=2, decoder_layers=2,
                       encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                       decoder_ffn_dim=128, vocab_size=100, num_mel_bins=16, max_source_positions=32,
                       max_target_positions=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                       decoder_start_token_id=3, suppress_tokens=None, begin_suppress_tokens=None),
    "deit": _vision("DeiTConfig", "DeiTModel", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128, image_size=32, patch_size=8),
    "dinov2": _vision("Dinov2Config", "Dinov2Model", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      image_size=32, patch_size=8),
    "swin": _vision("SwinConfig", "SwinModel", embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=2,
                    image_size=32, patch_size=4),
    "segformer": _vision("SegformerConfig", "SegformerModel", num_encoder_blocks=2, depths=[1, 1],
                         hidden_sizes=[32, 64], num_attention_heads=[1, 2], sr_ratios=[2, 1],
                         patch_sizes=[7, 3], strides=[4, 2]),
    "mobilevit": _vision("MobileViTConfig", "MobileViTModel", hidden_sizes=[32, 48, 64], image_size=32),
    "wav2vec2": _audio("Wav2Vec2Config", "Wav2Vec2Model", **COMMON, conv_dim=(32, 32), conv_stride=(5, 2),
                       conv_kernel=(10, 3), num_feat_extract_layers=2, num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=4),
    "clip": _text_image("CLIPConfig", "CLIPModel",
                        text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=128, vocab_size=100, max_position_embeddings=64),
                        vision_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=128, image_size=32, patch_size=8),
                        projection_dim=32),
}
ALL = {**ARCHS, **MORE}


def build(name: str, seed: int = 0):
    """(model in eval mode, example kwargs) for architecture ``name`` of ARCHS."""
    tr = transformers()
    config_cls, model_cls, overrides, inputs = ALL[name]
    torch.manual_seed(seed)
    config = getattr(tr, config_cls)(**overrides)
    if hasattr(config, "use_cache"):
        config.use_cache = False
    model = getattr(tr, model_cls)(config).eval()
    return model, inputs(seed)


def inputs(name: str, seed: int = 1, batch: int = 2, seq: int = 16):
    return ALL[name][3](seed, batch, seq)
