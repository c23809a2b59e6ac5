"""Train the shipped BraggNN weights (tomolive/weights/braggnn.*) on simulated Bragg peaks.

The recipe is :func:`tomolive.techniques.bragg.default_model.train_default` (seeded; with one
thread two runs give the same weights, whose sha256 the record holds). About a minute on one
quiet CPU core.

    .venv/bin/python scripts/train_braggnn.py                # rewrite the shipped weights
    .venv/bin/python scripts/train_braggnn.py --out /tmp/b   # elsewhere
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tomolive.techniques.bragg.braggnn import DEFAULT_MODEL, WEIGHTS_DIR, save_model
from tomolive.techniques.bragg.default_model import train_default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="directory for braggnn.pt and braggnn.json")
    args = parser.parse_args()
    model, record = train_default()
    args.out.mkdir(parents=True, exist_ok=True)
    saved = save_model(model, args.out / f"{DEFAULT_MODEL}.pt", record)
    print(f"trained in {record['training']['seconds']} s; held-out median error {saved['validation']}")


if __name__ == "__main__":
    main()
