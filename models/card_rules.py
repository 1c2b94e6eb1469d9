"""The rules of a head's ``config.json`` (its card), checked on every load.

A card that breaks a rule is refused with the field and the rule (:class:`HeadError`,
exit 2), never a traceback and never a head that predicts something else than it
says. Since card format 2 the card also records ``card_sha256``, the sha256 of its own
canonical JSON (sorted keys, without that field), so an edit of any field is detected;
format-1 cards (written before) are checked by these rules only.
"""

from __future__ import annotations

import hashlib
import json
import math
import re

from models.errors import HeadError
from models.heads import HEAD_TYPES

CARD_FORMATS = (1, 2)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def card_digest(card: dict) -> str:
    """sha256 (hex) of a card's canonical JSON, without ``card_sha256`` itself."""
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class _Rules:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, rule: str, value=None) -> None:
        shown = "" if value is None else f" (it is {json.dumps(value, default=str)[:80]})"
        raise HeadError(
            f"{self.where}: field {field!r} {rule}{shown}; the card was edited or damaged: "
            "restore it or retrain the head"
        )

    def integer(self, data: dict, field: str, *, low: int, name: str | None = None) -> int:
        value = data.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            self.fail(name or field, f"must be a whole number >= {low}", value)
        return value


def check_card(card: object, where: str) -> None:
    """Check a parsed ``config.json`` against the card's rules (in this order: format
    and checksum, names and targets, the head, training and scores, the features).

    Raises:
        HeadError: naming the first field that breaks a rule, and the rule.
    """
    rules = _Rules(where)
    version = _check_format(card, rules, where)
    targets = _check_targets(card, rules)
    head, layers, width = _check_head(card, rules, targets)
    score = _check_training(card, rules)
    _check_features(card, rules, version, head, layers, width)
    if isinstance(score, float) and math.isinf(score):
        rules.fail("best_val_pearson_mean", "must be finite", score)


def _check_format(card: object, rules: _Rules, where: str) -> int:
    """The card is an object of a known format whose checksum holds; its format."""
    if not isinstance(card, dict):
        rules.fail("(card)", "must be a JSON object")
    version = card.get("format_version")
    if version not in CARD_FORMATS:
        rules.fail(
            "format_version",
            f"must be one of {', '.join(map(str, CARD_FORMATS))} (this emi's card formats)",
            version,
        )
    if version >= 2:
        recorded = card.get("card_sha256")
        if not isinstance(recorded, str) or recorded != card_digest(card):
            raise HeadError(
                f"{where}: does not match its own checksum (card_sha256): edited or damaged. "
                "Restore the head's config.json or retrain the head."
            )
    return version


def _check_targets(card: dict, rules: _Rules) -> list[str]:
    """Name, preset and the target names."""
    for field in ("name", "preset"):
        if not isinstance(card.get(field, ""), str):
            rules.fail(field, "must be a text", card.get(field))
    targets = card.get("targets")
    if (
        not isinstance(targets, list)
        or not targets
        or not all(isinstance(t, str) and t.strip() for t in targets)
    ):
        rules.fail("targets", "must be a non-empty list of target names", targets)
    if len(set(targets)) != len(targets):
        rules.fail("targets", "must not repeat a name", targets)
    return targets


def _check_head(card: dict, rules: _Rules, targets: list[str]) -> tuple[dict, list, int]:
    """The head's architecture; (head, its layers, its layer width)."""
    head = card.get("head")
    if not isinstance(head, dict):
        rules.fail("head", "must be an object (the head's architecture)", head)
    if head.get("head_type") not in HEAD_TYPES:
        rules.fail(
            "head.head_type", f"must be one of {', '.join(HEAD_TYPES)}", head.get("head_type")
        )
    rules.integer(head, "input_dim", low=1, name="head.input_dim")
    if rules.integer(head, "num_targets", low=1, name="head.num_targets") != len(targets):
        rules.fail("head.num_targets", f"must equal the number of targets ({len(targets)})")
    head_type = HEAD_TYPES[head["head_type"]]
    for field in head_type.sizes:
        rules.integer(head, field, low=1, name=f"head.{field}")
    dropout = head.get("dropout", 0.0)
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, (int, float))
        or not 0.0 <= dropout < 1.0
    ):
        rules.fail("head.dropout", "must be a number in [0, 1)", dropout)
    layers = head.get("layers", [None])
    if (
        not isinstance(layers, list)
        or not layers
        or not all(
            k is None or (isinstance(k, int) and not isinstance(k, bool) and k >= 0) for k in layers
        )
    ):
        rules.fail("head.layers", "must be a list of layer numbers (or null: the last)", layers)
    numbered = [k for k in layers if k is not None]
    if len(set(layers)) != len(layers) or numbered != sorted(numbered):
        rules.fail("head.layers", "must list distinct layers in ascending order", layers)
    width = head.get("layer_width", 0)
    if isinstance(width, bool) or not isinstance(width, int) or width < 0:
        rules.fail("head.layer_width", "must be a whole number >= 0", width)
    if (len(layers) > 1) != (width > 0):
        rules.fail("head.layer_width", "must be > 0 exactly when several layers are mixed", width)
    for field in ("standardize", "layer_norm"):
        if not isinstance(head.get(field, False), bool):
            rules.fail(f"head.{field}", "must be true or false", head.get(field))
    mix = head.get("mix", "softmax")
    if mix not in ("softmax", "concat"):
        rules.fail("head.mix", "must be 'softmax' or 'concat'", mix)
    if mix == "concat" and head_type.several_layers != "concat":
        side_by_side = [t.name for t in HEAD_TYPES.values() if t.several_layers == "concat"]
        rules.fail("head.mix", f"can be 'concat' only for a {', '.join(side_by_side)} head", mix)
    return head, layers, width


def _check_training(card: dict, rules: _Rules) -> float:
    """The training settings, best epoch, weights hash; the best validation score."""
    training = card.get("training", {})
    if not isinstance(training, dict):
        rules.fail("training", "must be an object", training)
    max_frames = training.get("max_frames")
    if max_frames is not None:
        rules.integer(training, "max_frames", low=1, name="training.max_frames")
    for field in ("best_epoch",):
        if field in card:
            rules.integer(card, field, low=0)
    score = card.get("best_val_pearson_mean", 0.0)
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        rules.fail("best_val_pearson_mean", "must be a number", score)
    weights = card.get("weights_sha256")
    if weights is not None and (not isinstance(weights, str) or not _SHA256.fullmatch(weights)):
        rules.fail("weights_sha256", "must be a sha256 in hex", weights)
    return score


def _check_features(
    card: dict, rules: _Rules, version: int, head: dict, layers: list, width: int
) -> None:
    """The feature sets the head was trained on (spec, fingerprint, layers, widths)."""
    from featurestore.spec import FeatureSpec, fingerprint

    if version >= 2 and "joined" not in card:
        rules.fail("joined", "is missing (a list of the further feature sets, [] for none)")
    joined = card.get("joined", [])
    if not isinstance(joined, list):
        rules.fail("joined", "must be a list of feature sets", joined)
    refs = [("store", card.get("store"))] + [(f"joined[{i}]", r) for i, r in enumerate(joined)]
    widths = []
    for field, ref in refs:
        if not isinstance(ref, dict):
            rules.fail(field, "must be an object (the features the head was trained on)", ref)
        recorded = ref.get("fingerprint")
        if not isinstance(recorded, str) or not _SHA256.fullmatch(recorded):
            rules.fail(f"{field}.fingerprint", "must be a sha256 in hex", recorded)
        spec = ref.get("spec")
        if spec is None:
            widths.append(None)
            continue
        try:
            parsed = FeatureSpec.from_dict(spec)
            made = fingerprint(spec)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            rules.fail(f"{field}.spec", f"is not a feature spec ({type(err).__name__}: {err})")
        if made != recorded:
            rules.fail(
                f"{field}.fingerprint",
                f"must be the fingerprint of {field}.spec ({made[:12]}...)",
                recorded,
            )
        widths.append(parsed.hidden_size + parsed.vad_width)
        if field == "store":
            stored = set(parsed.layers)
            missing = [k for k in layers if k is not None and k not in stored]
            if missing:
                rules.fail(
                    "head.layers",
                    f"must name layers the store holds ({sorted(stored) or 'none'})",
                    layers,
                )
            if width and width != parsed.hidden_size:
                rules.fail(
                    "head.layer_width",
                    f"must be the store's hidden size ({parsed.hidden_size})",
                    width,
                )
    if None not in widths and sum(widths) != head["input_dim"]:
        rules.fail(
            "head.input_dim",
            f"must be the width of the features read ({sum(widths)})",
            head["input_dim"],
        )
