"""Quality check for a quantized output layer (issue 13): how far an 8-bit (or 4-bit) head moves
the default model's next-token distribution on real story text, against the bf16 change the
project already accepted.

The twelve adventures of the gold set (`benchmarks/gold/gold.jsonl`: actions and shown results,
in order) are read teacher-forced, up to `--max-tokens` tokens each. The shipped model (bf16 with
4-bit layers) gives the final hidden states once; each head variant turns them into logits. Two
references:
- the same hidden states through the head in fp32 (the stored fp16 weights): the head's own
  effect, nothing else;
- the whole model in fp32 (transformers' forward, no packing): what the bf16 choice was checked
  against (97.75% top-1 agreement, RESULTS "Speed");
- and the shipped bf16 head: the variant's own change to what players get today.

For each variant against each reference: top-1 agreement, mean KL(reference || variant), the
perplexity of the actual next tokens, and the sampling set under the game's defaults
(temperature 0.8, top-k 40, top-p 0.9): mean Jaccard overlap of the sets and mean total
variation distance of the sampling distributions (the chance two samplers, coupled as well as
possible, pick differently). It prints JSON; it does not decide: the bar is in RESULTS.md.

    AIDUNGEON_HOME=/root/.cache/aidungeon-tests python benchmarks/head_quality.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from aidungeon.model.cpu.packing import GROUP, Int8Head
from aidungeon.model.loader import LoadedModel, load_model
from aidungeon.model.sampling import nucleus
from aidungeon.storage.paths import default_paths

GOLD = Path(__file__).parent / "gold" / "gold.jsonl"
TEMPERATURE, TOP_K, TOP_P = 0.8, 40, 0.9
Head = Callable[[torch.Tensor], torch.Tensor]


def stories(path: Path) -> list[str]:
    """Each adventure of the gold set as one text: its actions and shown results in turn order."""
    turns: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        piece = f"{row['action']} {row['text']}".strip() if row["action"] else row["text"]
        turns.setdefault((row["setting"], row["seed"]), []).append((row["turn"], piece))
    return ["\n\n".join(piece for _, piece in sorted(pieces)) for pieces in turns.values()]


def int4_dequantized(weight: torch.Tensor) -> torch.Tensor:
    """The weight requantized to 4 bits in groups of 32 with a minimum and a step (Q4_1's form)."""
    out_features, in_features = weight.shape
    groups = weight.float().reshape(out_features, in_features // GROUP, GROUP)
    lowest = groups.amin(dim=-1, keepdim=True)
    step = ((groups.amax(dim=-1, keepdim=True) - lowest) / 15).clamp_min(1e-12)
    codes = torch.round((groups - lowest) / step).clamp(0, 15)
    return (codes * step + lowest).reshape(out_features, in_features)


def int8_weight_only(weight: torch.Tensor) -> torch.Tensor:
    """The weight on an int8 grid with one scale per row (the 8-bit head's weights, inputs exact)."""
    dense = weight.float()
    scales = dense.abs().amax(dim=1, keepdim=True) / 127
    return torch.round(dense / scales).clamp(-127, 127) * scales


def heads(shipped: LoadedModel, weight: torch.Tensor) -> dict[str, Head]:
    """The variants to compare, each hidden states (T, dim) -> fp32 logits (T, vocab)."""
    int4 = int4_dequantized(weight)
    int8 = int8_weight_only(weight)
    head = Int8Head(weight, None)
    return {
        "fp32": lambda h: h.float() @ weight.T,
        "bf16 (shipped)": lambda h: shipped.model.lm_head(h).float(),
        "int8 weights only": lambda h: h.float() @ int8.T,
        "int8 head (Int8Head, fbgemm)": lambda h: head(h),
        "int4 g32 requantized": lambda h: h.float() @ int4.T,
    }


def nucleus_sets(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, probabilities) of the game's default sampling set per position, zero outside it."""
    probs, ids = nucleus(logits / TEMPERATURE, top_k=TOP_K, top_p=TOP_P)
    return ids, probs


class Tally:
    """Sums of the per-position figures of one variant against one reference."""

    def __init__(self) -> None:
        self.positions = 0
        self.top1 = 0
        self.kl = 0.0
        self.nll_ref = 0.0
        self.nll = 0.0
        self.jaccard = 0.0
        self.tv = 0.0

    def add(self, ref: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, chunk: int = 128) -> None:
        """Positions `chunk` at a time: fp64 copies of whole stories' logits would take gigabytes."""
        for start in range(0, targets.numel(), chunk):
            rows = slice(start, start + chunk)
            self._add(ref[rows], logits[rows], targets[rows])

    def _add(self, ref: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        ref_logp, logp = torch.log_softmax(ref.double(), -1), torch.log_softmax(logits.double(), -1)
        self.positions += targets.numel()
        self.top1 += int((ref.argmax(-1) == logits.argmax(-1)).sum())
        self.kl += float((ref_logp.exp() * (ref_logp - logp)).sum())
        self.nll_ref -= float(ref_logp.gather(1, targets[:, None]).sum())
        self.nll -= float(logp.gather(1, targets[:, None]).sum())
        ref_ids, ref_probs = nucleus_sets(ref)
        ids, probs = nucleus_sets(logits)
        vocab = ref.shape[-1]
        dense_ref = torch.zeros(ref.shape[0], vocab, dtype=torch.float64).scatter_(1, ref_ids, ref_probs.double())
        dense = torch.zeros(ref.shape[0], vocab, dtype=torch.float64).scatter_(1, ids, probs.double())
        in_ref, in_var = dense_ref > 0, dense > 0
        union = (in_ref | in_var).sum(-1).double()
        self.jaccard += float(((in_ref & in_var).sum(-1).double() / union).sum())
        self.tv += float(0.5 * (dense_ref - dense).abs().sum())

    def summary(self) -> dict[str, float]:
        n = self.positions
        ppl_ref, ppl = math.exp(self.nll_ref / n), math.exp(self.nll / n)
        return {
            "positions": n,
            "top1_agreement": self.top1 / n,
            "mean_kl": self.kl / n,
            "perplexity_reference": ppl_ref,
            "perplexity": ppl,
            "perplexity_change": ppl / ppl_ref - 1,
            "sampling_set_jaccard": self.jaccard / n,
            "sampling_tv_distance": self.tv / n,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--stories", type=int, default=12, help="how many of the gold set's adventures to read")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.manual_seed(0)
    paths = default_paths()
    shipped = load_model(args.model, paths, device="cpu", int8_head=False)
    reference = load_model(args.model, paths, device="cpu", dtype="float32", pack=False)
    weight = reference.model.get_output_embeddings().weight.detach().float()
    variants = heads(shipped, weight)
    references = ("fp32 head", "fp32 model", "bf16 head")
    tallies = {(ref, name): Tally() for ref in references for name in variants}
    start = time.perf_counter()
    texts = stories(GOLD)[: args.stories]
    with torch.inference_mode():
        for number, text in enumerate(texts, 1):
            print(f"story {number}/{len(texts)}", file=sys.stderr, flush=True)
            ids = shipped.tokenizer.encode(text, add_special_tokens=False)[: args.max_tokens]
            inputs, targets = torch.tensor([ids]), torch.tensor(ids[1:])
            hidden = shipped.model.model(input_ids=inputs).last_hidden_state[0, :-1]
            full = reference.model(input_ids=inputs).logits[0, :-1].float()
            logits = {name: head(hidden) for name, head in variants.items()}
            for name, out in logits.items():
                tallies[("fp32 head", name)].add(logits["fp32"], out, targets)
                tallies[("fp32 model", name)].add(full, out, targets)
                tallies[("bf16 head", name)].add(logits["bf16 (shipped)"], out, targets)
    results: dict[str, Any] = {
        "model": shipped.name,
        "shipped_dtype": shipped.dtype,
        "packed_layers": shipped.packed_layers,
        "stories": len(texts),
        "max_tokens": args.max_tokens,
        "seconds": time.perf_counter() - start,
        "against": {ref: {name: tallies[(ref, name)].summary() for name in variants} for ref in references},
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
