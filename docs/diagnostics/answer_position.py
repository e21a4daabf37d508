"""Where does the demo model read its answer after K? Two streams joined by hand, several ways.

Run from the repository root: ``python docs/diagnostics/answer_position.py [--tag non-subject] [--images 40]``.
It prints, for held-out seed 2 at 7 of 64 visual tokens (``cls`` partition), K = 2:

- how often the first answer token equals ``full``'s when the subject and non-subject streams,
  run apart through the model's own decoder up to K, are joined by hand: averaging (size weights)
  every post-image token, every one but the answer position, the answer position alone; carrying
  the non-subject copies (``merge=carry``); carrying the rest and averaging the answer position;
  nothing (prune);
- with ``--attention``, the share of the answer position's attention (heads averaged, eager) on
  the prefix, the kept visual tokens, its own post-image tokens and the carried copies, per layer.

docs/demo-model.md ("Carrying instead of averaging") quotes both. References run transformers'
layers (:func:`vtsched.core.testing.models.joined_logits`' building blocks), not the engine.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from vtsched.core import Budget, Scheduler
from vtsched.core.demo import demo_model_path, synthetic
from vtsched.core.testing.models import decoder_slice, layer_embeds, one_sequence, stream_positions
from vtsched.core.tokens import Role

KINDS = ("prefix", "visual", "own post-image", "carried")


def streams_until(scheduler, sample, keeps, k):
    """Per stream, ``{position: state entering layer k}`` (the model's own layers on shortened sequences)."""
    lm = scheduler.adapter.language_model
    embeds = layer_embeds(scheduler.adapter.model, sample)
    states = []
    for keep in keeps:
        with decoder_slice(lm, list(lm.layers)[:k], final_norm=False) as part:
            out = part(inputs_embeds=embeds[:, keep], position_ids=keep[None], attention_mask=one_sequence(keep[None]),
                       use_cache=False).last_hidden_state
        states.append(dict(zip(keep.tolist(), out[0])))
    return states


def finish(scheduler, rows, positions, k, attention=False):
    """The joined sequence through layers k.. (the model's own forward): last-token logits, attentions."""
    lm = scheduler.adapter.language_model
    ids = torch.tensor([positions])
    with decoder_slice(lm, list(lm.layers)[k:], final_norm=True) as part:
        out = part(inputs_embeds=torch.stack(rows)[None], position_ids=ids, attention_mask=one_sequence(ids),
                   use_cache=False, output_attentions=attention)
    return scheduler.adapter.model.lm_head(out.last_hidden_state[0, -1]), out.attentions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="non-subject", choices=["subject", "non-subject"])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--attention", action="store_true", help="also print where the answer position looks")
    args = parser.parse_args()
    s = Scheduler.from_pretrained(str(demo_model_path()), attn_implementation="eager" if args.attention else "sdpa")
    items = [x for x in synthetic.generate(2, args.images) if x.tag == args.tag]
    agree: dict[str, int] = defaultdict(int)
    mass: dict[tuple[int, str], list[float]] = defaultdict(list)
    with torch.inference_mode():
        for item in items:
            batch = s.prepare([item.image], [item.question])
            sample = batch.samples[0]
            full = s.plan(batch, s.make_policy("full", {}), None, None)
            want = int(s.engine.prefill(batch, full.schedule, full.partition, use_cache=False).logits.argmax())
            plan = s.plan(batch, s.make_policy("prune", {}), None, Budget.parse("7"))
            members = [plan.partition.members(0, g) for g in plan.partition.groups]
            keeps = [stream_positions(sample, m) for m in members]
            own, other = streams_until(s, sample, keeps, args.k)
            w_own = len(members[0]) / sample.num_visual  # size fusion
            roles = sample.roles.tolist()
            post = {p for p in keeps[0].tolist() if roles[p] in Role.FUSED["post_image"]}
            last = int(keeps[0][-1])
            cases = {"prune": (set(), set()), "average every post-image token": (post, set()),
                     "average all but the answer position": (post - {last}, set()),
                     "average the answer position alone": ({last}, set()), "carry (merge=carry)": (set(), post),
                     "carry the rest, average the answer position": ({last}, post - {last})}
            for name, (averaged, carried) in cases.items():
                rows, positions, kinds = [], [], []
                for p in keeps[0].tolist():
                    if p in carried:
                        rows.append(other[p]), positions.append(p), kinds.append(3)
                    rows.append(w_own * own[p] + (1 - w_own) * other[p] if p in averaged else own[p])
                    positions.append(p)
                    kinds.append(0 if roles[p] == Role.PREFIX else 1 if roles[p] == Role.VISUAL else 2)
                watch = args.attention and name == "carry (merge=carry)"
                logits, attentions = finish(s, rows, positions, args.k, attention=watch)
                agree[name] += int(logits.argmax()) == want
                if watch:
                    kind = torch.tensor(kinds)
                    for i, layer_attention in enumerate(attentions):
                        last_row = layer_attention[0, :, -1].mean(0)
                        for j, label in enumerate(KINDS):
                            mass[(args.k + i, label)].append(float(last_row[kind == j].sum()))
    print(f"seed 2, {len(items)} {args.tag} questions, 7 of 64 tokens, K={args.k}: first answer token equals full's")
    for name, n in agree.items():
        print(f"  {name:45s} {n:4d}/{len(items)} ({100 * n / len(items):.1f}%)")
    if mass:
        print("attention of the answer position after a carry (heads averaged):")
        for layer in sorted({layer for layer, _ in mass}):
            print(f"  layer {layer}: " + "  ".join(
                f"{label} {sum(mass[(layer, label)]) / len(mass[(layer, label)]):.3f}" for label in KINDS))


if __name__ == "__main__":
    main()
