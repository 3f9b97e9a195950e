"""Does a model trained on ``digits_vqa`` read the digits? For N records: the answer loss with each
record's own image and with another record's image, and the greedy accuracy of the digit token
(chance: 10%). Equal losses and chance accuracy mean the model learnt the answer format only.

    python benchmarks/vl/probe_digits.py runs/internvl_tiny_digits/hf --config examples/internvl_tiny_digits.toml
"""
from __future__ import annotations

import argparse
import json
import sys
import tomllib

import torch
import torch.nn.functional as F


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="HF folder (the run's hf/ export)")
    p.add_argument("--config", required=True, help="the run's TOML (for [data] and [data.vision])")
    p.add_argument("--records", type=int, default=300)
    p.add_argument("--last", action="store_true", help="probe the last records instead of the first")
    args = p.parse_args(argv)

    from xt.data.config import data_config_from_dict
    from xt.data.tokenizer import load_tokenizer
    from xt.data.vl_dataset import build_vl_dataset
    from xt.data.vl_loader import document_pixels
    from xt.models import from_pretrained

    data = tomllib.load(open(args.config, "rb"))["data"]
    cfg = data_config_from_dict({**data, "max_documents": None})
    ds = build_vl_dataset(cfg)
    tok = load_tokenizer(cfg.tokenizer)
    digits = {tok.convert_tokens_to_ids(str(d)) for d in range(10)}
    model = from_pretrained(args.model).eval()
    n = min(args.records, ds.num_documents)
    docs = range(ds.num_documents - n, ds.num_documents) if args.last else range(n)
    own = other = right = 0.0
    with torch.no_grad():
        for d in docs:
            a, b = int(ds.doc_offsets[d]), int(ds.doc_offsets[d + 1])
            ids, mask = ds.tokens[a:b].long(), ds.loss_mask[a:b]
            target = torch.where(torch.cat([mask[1:], torch.tensor([False])]), torch.cat([ids[1:], ids[:1]]), -100)
            first = next(t for t in range(len(ids) - 1) if int(target[t]) in digits)
            for k, img in enumerate((d, (d + 7) % ds.num_documents)):
                logits = model(input_ids=ids, pixel_values=document_pixels(ds, img, cfg.vision), return_logits=True).logits
                loss = float(F.cross_entropy(logits, target, ignore_index=-100))
                if k == 0:
                    own += loss
                    right += float(logits[first].argmax() == target[first])
                else:
                    other += loss
    res = {"records": n, "answer_loss_own_image": own / n, "answer_loss_other_image": other / n,
           "digit_accuracy": right / n}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
