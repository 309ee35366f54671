"""What the command line shows of a job's progress events: a tqdm bar while embedding, a line per stage and every
few epochs, warnings (on stderr, so stdout stays the result)."""

from __future__ import annotations

import sys

from tqdm import tqdm

from engine.core.events import EventKind, Stage


class ConsoleProgress:
    """Turns progress events into a tqdm bar for embedding and a line every few epochs."""

    def __init__(self):
        self.bar = None

    def __call__(self, event: dict) -> None:
        kind = event["type"]
        if kind == EventKind.EMBED:
            self._embed(event)
        elif kind == EventKind.EPOCH and (event["epoch"] % 10 == 0 or event["phase"] == "fine_tune"):
            val = event.get("val_accuracy")
            print(f"  {event['phase']} epoch {event['epoch']}: loss {event['loss']:.4f} acc {event['accuracy']:.3f}"
                  + (f" val_loss {event['val_loss']:.4f} val_acc {val:.3f}" if val is not None else ""),
                  file=sys.stderr)
        elif kind == EventKind.STAGE:
            self.close()
            print(event["message"] + ("" if event["stage"] == Stage.DONE else " ..."), file=sys.stderr)
        elif kind == EventKind.WARNING:
            print(f"warning: {event['message']}", file=sys.stderr)

    def _embed(self, event: dict) -> None:
        if self.bar is None:
            self.bar = tqdm(total=event["total"], unit="img", desc="features", file=sys.stderr)
        self.bar.n = event["done"]
        self.bar.set_postfix(cached=event["cached"], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
