"""Library transformers and CNNs nobody in this project wrote, built int8 on every runtime.

Small random-config Hugging Face models (GPT-2, Llama, T5 encoder, DistilBERT, ViT, Swin,
ConvNeXt, MobileViT, SegFormer, Wav2Vec2, ResNet, Whisper encoder; ALBERT with its one layer
reused, DeBERTa-v2, OPT, Phi, GPT-NeoX, CLIP with one image and four prompts, DeiT,
DINOv2; BERT, BLOOM, Falcon, Mistral, Mixtral, Mamba, MobileNetV2, LeViT, BEiT, Audio
Spectrogram Transformer), randomly initialised
(seed 0), each built by ``compress`` for the three int8 targets with every layer int8
(``fallback`` off, no latency check) on 32 random calibration inputs (token ids in the
vocabulary, or standard normal images / audio / spectrograms). Per cell: whether it built, the
route its fp32 file took (the exporter, and the error of the route that failed first), the
held-out fidelity the gate measured (the last quarter of the calibration inputs against
PyTorch fp32), the layers the manifest lists and how many of them it read from the artifact,
and the build time. Random weights make the fidelity a check of the build, not of any task.

    python -m benchmarks.library_models [--models hf_gpt2,hf_llama] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import INT8, RUNTIMES, cpu_name, log, run_models

VOCAB = 100


def _ids(n: int) -> Any:
    return lambda g: torch.randint(0, VOCAB, (1, n), generator=g)


def _normal(*shape: int) -> Any:
    return lambda g: torch.randn(*shape, generator=g)


class _Clip(torch.nn.Module):
    """CLIP's image-to-text logits for (one image, several prompts)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.m(input_ids=ids, pixel_values=pixels).logits_per_image


class _Output(torch.nn.Module):
    """One tensor of a Hugging Face model's output object."""

    def __init__(self, model: torch.nn.Module, key: str) -> None:
        super().__init__()
        self.m, self.key = model, key

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return getattr(self.m(*args), self.key)


def _models() -> dict[str, tuple[Any, list[Any]]]:
    import transformers as T

    def gpt2() -> Any:
        return _Output(T.GPT2LMHeadModel(T.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)), "logits")

    def llama() -> Any:
        return _Output(T.LlamaForCausalLM(T.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)), "logits")

    def t5_encoder() -> Any:
        return _Output(T.T5EncoderModel(T.T5Config(
            vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)),
            "last_hidden_state")

    def distilbert() -> Any:
        return _Output(T.DistilBertForSequenceClassification(T.DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
            max_position_embeddings=64)), "logits")

    def vit() -> Any:
        return _Output(T.ViTForImageClassification(T.ViTConfig(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=64, num_labels=5)), "logits")

    def swin() -> Any:
        return _Output(T.SwinForImageClassification(T.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
            window_size=4, num_labels=5)), "logits")

    def convnext() -> Any:
        return _Output(T.ConvNextForImageClassification(T.ConvNextConfig(
            hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_labels=5)), "logits")

    def mobilevit() -> Any:
        return _Output(T.MobileViTForImageClassification(T.MobileViTConfig(
            image_size=32, patch_size=2, hidden_sizes=[16, 24, 32],
            neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32], num_labels=5)), "logits")

    def segformer() -> Any:
        return _Output(T.SegformerForSemanticSegmentation(T.SegformerConfig(
            num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
            patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
            decoder_hidden_size=32, num_labels=4)), "logits")

    def wav2vec2() -> Any:
        return _Output(T.Wav2Vec2ForCTC(T.Wav2Vec2Config(
            vocab_size=20, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)), "logits")

    def resnet() -> Any:
        return _Output(T.ResNetForImageClassification(T.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5)), "logits")

    def whisper_encoder() -> Any:
        return _Output(T.WhisperModel(T.WhisperConfig(
            num_mel_bins=16, d_model=32, encoder_layers=2, encoder_attention_heads=4,
            encoder_ffn_dim=64, max_source_positions=16, decoder_layers=1,
            decoder_attention_heads=4, decoder_ffn_dim=64, vocab_size=VOCAB, pad_token_id=0,
            bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)).encoder,
            "last_hidden_state")

    text = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=64)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4)

    def albert() -> Any:
        return _Output(T.AlbertModel(T.AlbertConfig(**text, embedding_size=16)),
                       "last_hidden_state")

    def deberta_v2() -> Any:
        return _Output(T.DebertaV2Model(T.DebertaV2Config(
            **text, relative_attention=True, pos_att_type=["p2c", "c2p"])), "last_hidden_state")

    def opt() -> Any:
        return _Output(T.OPTForCausalLM(T.OPTConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32)), "logits")

    def phi() -> Any:
        return _Output(T.PhiForCausalLM(T.PhiConfig(**text)), "logits")

    def gpt_neox() -> Any:
        return _Output(T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**text)), "logits")

    def clip() -> Any:
        return _Clip(T.CLIPModel(T.CLIPConfig(
            text_config={**text, "max_position_embeddings": 16},
            vision_config={**vision, "intermediate_size": 64}, projection_dim=16)))

    def deit() -> Any:
        return _Output(T.DeiTForImageClassification(T.DeiTConfig(
            **vision, intermediate_size=64, num_labels=5)), "logits")

    def dinov2() -> Any:
        return _Output(T.Dinov2Model(T.Dinov2Config(**vision, mlp_ratio=2)), "pooler_output")

    def bert() -> Any:
        return _Output(T.BertForSequenceClassification(T.BertConfig(**text, num_labels=3)),
                       "logits")

    def bloom() -> Any:  # ALiBi position biases
        return _Output(T.BloomForCausalLM(T.BloomConfig(
            vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)), "logits")

    def falcon() -> Any:  # multi-query attention: one key / value head taken by index
        return _Output(T.FalconForCausalLM(T.FalconConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)),
            "logits")

    def mistral() -> Any:  # grouped-query attention, sliding window
        return _Output(T.MistralForCausalLM(T.MistralConfig(
            **text, num_key_value_heads=2, sliding_window=8)), "logits")

    def mixtral() -> Any:  # mixture of experts, 2 of 4 per token
        return _Output(T.MixtralForCausalLM(T.MixtralConfig(
            **text, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)),
            "logits")

    def mamba() -> Any:  # selective state space, causal depthwise conv
        return _Output(T.MambaForCausalLM(T.MambaConfig(
            vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
            conv_kernel=4, use_cache=False)), "logits")

    def mobilenet_v2() -> Any:
        return _Output(T.MobileNetV2ForImageClassification(T.MobileNetV2Config(
            image_size=32, depth_multiplier=0.35, num_labels=5)), "logits")

    def levit() -> Any:  # attention with learned biases, BatchNorm'd linears
        return _Output(T.LevitForImageClassification(T.LevitConfig(
            image_size=64, hidden_sizes=[32, 48, 64], num_attention_heads=[2, 2, 2],
            depths=[1, 1, 1], key_dim=[8, 8, 8], num_labels=5)), "logits")

    def beit() -> Any:  # relative position bias
        return _Output(T.BeitForImageClassification(T.BeitConfig(
            **vision, intermediate_size=64, use_relative_position_bias=True, num_labels=5)),
            "logits")

    def ast() -> Any:  # audio spectrogram transformer
        return _Output(T.ASTForAudioClassification(T.ASTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_length=32, num_mel_bins=16, frequency_stride=4, time_stride=4, num_labels=5)),
            "logits")

    image = [_normal(1, 3, 32, 32)]
    return {"gpt2": (gpt2, [_ids(12)]), "llama": (llama, [_ids(12)]),
            "t5_encoder": (t5_encoder, [_ids(12)]), "distilbert": (distilbert, [_ids(12)]),
            "vit": (vit, image), "swin": (swin, image), "convnext": (convnext, image),
            "mobilevit": (mobilevit, image), "segformer": (segformer, image),
            "resnet": (resnet, image), "wav2vec2": (wav2vec2, [_normal(1, 800)]),
            "whisper_encoder": (whisper_encoder, [_normal(1, 16, 32)]),
            "albert": (albert, [_ids(12)]), "deberta_v2": (deberta_v2, [_ids(12)]),
            "opt": (opt, [_ids(12)]), "phi": (phi, [_ids(12)]),
            "gpt_neox": (gpt_neox, [_ids(12)]),
            "clip": (clip, [_normal(1, 3, 32, 32), lambda g: torch.randint(
                3, VOCAB, (4, 8), generator=g)]),
            "deit": (deit, image), "dinov2": (dinov2, image),
            "bert": (bert, [_ids(12)]), "bloom": (bloom, [_ids(12)]),
            "falcon": (falcon, [_ids(12)]), "mistral": (mistral, [_ids(12)]),
            "mixtral": (mixtral, [_ids(12)]), "mamba": (mamba, [_ids(12)]),
            "mobilenet_v2": (mobilenet_v2, image), "levit": (levit, [_normal(1, 3, 64, 64)]),
            "beit": (beit, image), "ast": (ast, [_normal(1, 32, 16)])}


#: (model, runtime) cells not run, with why.
SKIP: dict[tuple[str, str], str] = {}


#: What a row's numbers mean where they are not what they seem.
NOTES = {"mobilevit": "its randomly initialised outputs are exactly 0 on these inputs, so "
         "int8 matches fp32 trivially (SQNR inf): the row shows it builds, not its fidelity"}


def run_model(name: str, tmp: Path) -> dict[str, Any]:
    import json

    from edgekit.measure.metrics import json_number
    from edgekit.pipeline import compress

    factory, makers = _models()[name]
    torch.manual_seed(0)
    model = factory().eval()
    g = torch.Generator().manual_seed(1)
    data = [tuple(make(g) for make in makers) for _ in range(32)]
    cells: dict[str, Any] = {}
    for rt in RUNTIMES:
        target = INT8[rt]
        if (name, rt) in SKIP:
            cells[rt] = {"skipped": SKIP[(name, rt)]}
            continue
        t0 = time.perf_counter()
        try:
            compress(model, data[0], targets=[target], out_dir=tmp / rt, calibration=data,
                     progress=False, quantization={"latency_check": False, "fallback": False})
            entry = json.loads((tmp / rt / "manifest.json").read_text())["targets"][target]
            q, info = entry["quantization"], entry.get("artifact_info") or {}
            outs = q["heldout_fidelity"]["outputs"]
            cells[rt] = {
                "built": True, "seconds": round(time.perf_counter() - t0, 1),
                "exporter": info.get("exporter"),
                "first_route_error": info.get("dynamo_error") or info.get(
                    "pytorch_frontend_error"),
                # "inf" where the int8 outputs equal fp32's (JSON has no infinity)
                "heldout_sqnr_db": json_number(min(float(o["sqnr_db"]) for o in outs)),
                "heldout_centred_cosine": min(float(o["centred_cosine"]) for o in outs),
                "layers": len(q["layers"]),
                # layers the file cannot hold (unused, or folded into a constant)
                "layers_not_in_file": sum(r["precision_from"] == "model" for r in q["layers"]),
                "layers_read_from_artifact": sum(r["precision_from"] == "artifact"
                                                 for r in q["layers"]),
                "float_layers": len(q["float_layers"]),
                # what was built: int8_scope "auto" compares both scopes for a layer-norm model
                "int8_scope": (info.get("quantization") or {}).get("int8_scope", {}).get(
                    "applied"),
                "source_kept": (q.get("source_choice") or {}).get("kept"),
                "alternative": q.get("accuracy_alternative"),
                "unattributed_nodes": len(q.get("unattributed_nodes") or []),
            }
        except Exception as exc:  # noqa: BLE001 - a failed build is a result, with its reason
            cells[rt] = {"built": False, "seconds": round(time.perf_counter() - t0, 1),
                         "error": f"{type(exc).__name__}: {str(exc)[:400]}"}
        log(name, f"{rt}: {cells[rt]}")
    return {"model": name, "cells": cells}


def markdown(res: dict[str, Any]) -> list[str]:
    lines = ["# Library models built int8 on every runtime", "",
             f"`python -m benchmarks.library_models` on {res['machine']}, torch "
             f"{res['torch']}, transformers {res['transformers']}, measured {res['measured']}. "
             "Random-config Hugging Face models, seed 0; 32 random calibration inputs, the last "
             "8 held out; every layer int8 (`fallback` off). Cell: held-out SQNR dB / centred "
             "cosine (against PyTorch fp32), layers the manifest read from the file / listed "
             "(and those it found the file cannot hold), "
             "build seconds; the route where the first one failed. `L`: the file has Q/DQ "
             "on the layer inputs only (`int8_scope`, read from the artifact's record).", "",
             "| model | " + " | ".join(RUNTIMES) + " |", "|---|" + "---|" * len(RUNTIMES)]
    built = total = read = listed = not_in_file = 0
    notes: list[str] = []
    for row in res["models"]:
        if "error" in row:
            lines.append(f"| {row['model']} | " + " | ".join(["error"] * len(RUNTIMES)) + " |")
            notes.append(f"- {row['model']}: {row['error']}")
            continue
        cells = []
        for rt in RUNTIMES:
            c = row["cells"][rt]
            if "skipped" in c:
                cells.append("not run")
                notes.append(f"- {row['model']} / {rt}: {c['skipped']}")
                continue
            total += 1
            if not c["built"]:
                cells.append("**failed**")
                notes.append(f"- {row['model']} / {rt}: {c['error']}")
                continue
            built += 1
            route = " (ONNX route)" if c["first_route_error"] and rt == "openvino" else \
                " (TorchScript route)" if c["first_route_error"] else ""
            absent = c.get("layers_not_in_file", 0)
            read += c["layers_read_from_artifact"]
            listed += c["layers"]
            not_in_file += absent
            scope = " L" if c.get("int8_scope") == "layers" else ""
            cells.append(f"{float(c['heldout_sqnr_db']):.1f}{scope} / "
                         f"{c['heldout_centred_cosine']:.3f}, "
                         f"{c['layers_read_from_artifact']}/{c['layers']}"
                         f"{f' (+{absent} not in the file)' if absent else ''}, "
                         f"{c['seconds']:.0f} s{route}")
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
        if row["model"] in NOTES:
            notes.append(f"- {row['model']}: {NOTES[row['model']]}")
    lines += ["", f"Built in {built} of {total} cells run. Layer rows read back from the "
              f"files: {read} of {listed}; {not_in_file} more said to be absent from the file "
              "(output unused) or folded into a constant (input-independent), found by "
              "running the model."]
    if notes:
        lines += ["", *notes]
    return lines + [""]


def main() -> None:
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(_models()))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    res: dict[str, Any] = {"machine": cpu_name(), "torch": torch.__version__,
                           "transformers": transformers.__version__,
                           "measured": time.strftime("%Y-%m-%d %H:%M"), "models": []}
    run_models(args.models.split(","), res, run_model, args.out, "library_models", markdown)


if __name__ == "__main__":
    main()
