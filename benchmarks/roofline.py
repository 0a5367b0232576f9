"""What a BART forward pass must compute and a decoding step must read, and what a device can do at
best: the numbers behind "achieved TFLOP/s" and "fraction of the roofline" in `benchmarks.device_bench`.

FLOPs count the matrix products only (2 per multiply-add): projections, feed-forward, attention scores
and weighted sums, the output head; layer norms, softmax and activations are left out (a few percent).
Peak figures are the vendors' dense (no sparsity) datasheet numbers of the SXM parts; a device that is
not in the table gets no peak, and its roofline fractions are left out rather than guessed.
"""

from __future__ import annotations

# device kind substring -> peak dense FLOP/s per mode and HBM bytes/s (NVIDIA datasheets, SXM parts)
PEAKS = {
    "H200": {"bf16": 989e12, "tf32": 494e12, "fp32-exact": 67e12, "hbm_bytes_s": 4.8e12},
    "H100": {"bf16": 989e12, "tf32": 494e12, "fp32-exact": 67e12, "hbm_bytes_s": 3.35e12},
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32-exact": 19.5e12, "hbm_bytes_s": 2.04e12},
}
MODE_BYTES = {"fp32-exact": 4, "tf32": 4, "bf16": 2}


def peaks_for(device_kind: str) -> dict | None:
    for name, peak in PEAKS.items():
        if name.lower() in device_kind.lower():
            return dict(peak, matched=name)
    return None


def _layer_flops(d: int, ffn: int, tokens: int, keys: int, cross_tokens: int | None = None) -> float:
    """One layer over `tokens` query positions attending to `keys` positions; with `cross_tokens`, a
    decoder layer whose cross-attention reads that many encoder positions (K/V projected here)."""
    f = 2 * tokens * (4 * d * d + 2 * d * ffn) + 2 * 2 * tokens * keys * d
    if cross_tokens is not None:
        f += 2 * tokens * 2 * d * d + 2 * cross_tokens * 2 * d * d + 2 * 2 * tokens * cross_tokens * d
    return f


def forward_flops(cfg: dict, head: str, batch: int, length: int) -> float:
    """Matmul FLOPs of one forward pass of `head` ("qa", "cls", "lm") with decoder length = source length
    (the decoder input is the shifted source, as the forward benchmark feeds it)."""
    d = cfg["d_model"]
    enc = cfg["encoder_layers"] * _layer_flops(d, cfg["encoder_ffn_dim"], length, length)
    dec = cfg["decoder_layers"] * _layer_flops(d, cfg["decoder_ffn_dim"], length, length, cross_tokens=length)
    if head == "cls":   # the classification head reads one row per sequence
        out = 2 * (d * d + d * cfg.get("num_labels", 3))
    else:
        out = 2 * d * (2 if head == "qa" else cfg["vocab_size"]) * length
    return float(batch * (enc + dec + out))


def decode_step_bytes(cfg: dict, batch: int, source_length: int, cache_length: int, mode: str) -> dict:
    """Bytes one greedy decoding step must read at least: the decoder weights it multiplies with
    (not the cross-attention K/V projections, applied once to the encoder output), the LM head, the
    cached cross-attention K/V and the self-attention cache up to `cache_length` positions."""
    d, L, w = cfg["d_model"], cfg["decoder_layers"], MODE_BYTES[mode]
    per_layer = (4 * d * d + 2 * d * d + 2 * d * cfg["decoder_ffn_dim"]) * w   # self QKVO, cross Q/O, FFN
    weights = L * per_layer + cfg["vocab_size"] * d * w
    cross = 2 * L * batch * source_length * d * w
    self_cache = 2 * L * batch * cache_length * d * w
    return {"weights": int(weights), "cross_kv": int(cross), "self_cache": int(self_cache),
            "total": int(weights + cross + self_cache)}
