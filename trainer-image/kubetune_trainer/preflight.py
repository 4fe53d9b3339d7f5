"""Checks that stop a run that cannot succeed (or cannot be trusted) before it trains: where the output
goes, which weight files the model has, whether any answer token survives truncation, and whether the
eval set leaks from the training set. Each failure names the field at fault and what would be accepted."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from kubetune_api.spec import overlap_errors

from .batching import IGNORE
from .errors import ConfigError, NotFound

SAFE_WEIGHTS = (".safetensors",)
PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_output(spec, storage, artifact_root: str) -> None:
    """spec.output.uri outside every input (paths resolved as this run sees them), and a local output root
    whose existing parts are folders, so nothing fails with NotADirectoryError after training."""
    problems = overlap_errors(spec.uris(), storage.resolve)
    if problems:
        raise ConfigError("; ".join(problems))
    root = storage.resolve(artifact_root)
    if root.startswith("s3://"):
        return
    for part in [Path(root), *Path(root).parents]:
        if part.exists() and not part.is_dir():
            raise ConfigError(f"spec.output.uri {spec.output.uri!r}: {part} is a file, not a folder; artefacts are "
                              f"written to the folder {root}; use a folder (or a new path) as the output")


def check_weights(names: list[str], model_uri: str, allow_pickle: bool) -> None:
    """Safetensors only unless model.allowPickleWeights: a pickle can run code when it is loaded."""
    weights = [n for n in names if n.lower().endswith(SAFE_WEIGHTS + PICKLE_WEIGHTS)
               and not PurePosixPath(n).name.startswith(("training_args", "optimizer", "scheduler", "rng_state"))]
    if any(n.lower().endswith(SAFE_WEIGHTS) for n in weights):
        return
    pickles = [n for n in weights if n.lower().endswith(PICKLE_WEIGHTS)]
    if pickles and not allow_pickle:
        shown = ", ".join(PurePosixPath(n).name for n in pickles[:3]) + (" ..." if len(pickles) > 3 else "")
        raise ConfigError(f"model uri {model_uri!r} has only pickle weights ({shown}), which can run code when "
                          "loaded; only *.safetensors weights are loaded by default. Convert the model to "
                          "safetensors (save_pretrained(..., safe_serialization=True)), or set "
                          "spec.model.allowPickleWeights: true if you trust the file")
    if not weights:
        raise NotFound(f"model uri {model_uri!r}: no weight files (*.safetensors) found; expected a Hugging Face "
                       "model folder with config.json and model*.safetensors")


def answer_tokens(encoded) -> int:
    """Tokens of the answer that training learns from (the first token is never a target)."""
    return sum(t != IGNORE for t in encoded.labels[1:])


def check_answers(train: list, evaluation: list, max_len: int) -> list[str]:
    """Fail when truncation to dataset.maxSeqLength leaves no answer token to train on or to score; warn
    with counts when it does so for some examples. Returns the warnings."""
    warnings = []
    for role, encoded in (("training", train), ("eval", evaluation)):
        empty = [e for e in encoded if answer_tokens(e) == 0]
        if not empty:
            continue
        lengths = sorted(e.length for e in encoded)
        seen = f"full example lengths seen: min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]} tokens"
        if len(empty) == len(encoded):
            raise ConfigError(f"dataset.maxSeqLength {max_len} leaves no answer tokens in any of the {len(encoded)} "
                              f"{role} examples: the prompts fill all {max_len} tokens ({seen}); raise "
                              "dataset.maxSeqLength above the prompt lengths, or shorten the prompts")
        warnings.append(f"{len(empty)} of {len(encoded)} {role} examples have their whole answer truncated away by "
                        f"dataset.maxSeqLength {max_len} ({seen}); they are not "
                        + ("trained on" if role == "training" else "scored by evalLoss"))
    return warnings


def leak_warning(train: list, evaluation: list, eval_field: str) -> str | None:
    """A warning when the eval examples also appear in the training data (or mostly share its prompts)."""
    if not evaluation:
        return None
    trained = set(train)
    # The whole conversation before the answer, not only the last user message: in multi-turn data that is
    # often generic ("Is it in stock?") and would be shared by unrelated conversations.
    prompts = {_prompt(e) for e in train}
    same = sum(e in trained for e in evaluation)
    same_prompt = sum(_prompt(e) in prompts for e in evaluation) - same
    if same == 0 and same_prompt * 2 < len(evaluation):
        return None
    return (f"possible eval leak: {same} of {len(evaluation)} eval examples ({eval_field}) are also in the training "
            f"data and {same_prompt} more share a user prompt with a training example; eval metrics will overstate how "
            "the model does on unseen data. Use held-out data for dataset.eval, or dataset.evalSplit")


def _prompt(example) -> tuple:
    return tuple(example.turns[: example.answer_index])
