"""Command line prediction with the `multimodal-absa` pipeline.

One tweet:

    python -m modeling_dasco.predict --model runs/sample --text "Chuck Bass is everything #MCM" --image photo.jpg

A JSONL file, one tweet per line (`{"text": ..., "image": path, "aspects": [...], "id": ...}`, aspects and id
optional), written to another JSONL file:

    python -m modeling_dasco.predict --model runs/sample --input tweets.jsonl --output predictions.jsonl

A line that cannot be read (invalid JSON, a missing or unreadable image) or predicted is reported with its line
number and skipped, unless `--fail-fast` is given. The exit status is 0 when every line was predicted and 1
otherwise.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .explain import draw_attention_map, safe_file_name
from .parsing import DEFAULT_PARSER_MODEL
from .pipeline_dasco import PIPELINE_TASK, DascoMabsaPipeline, load_image


logger = logging.getLogger(__name__)


class LineError(ValueError):
    """An input line that cannot be read or predicted; the message names the line."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_dasco.predict",
        description="Find aspect terms in tweets and the sentiment toward each, or classify given aspects.",
    )

    parser.add_argument("--model", required=True, help="Checkpoint folder or Hub model id of a DASCO model.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="Raw text of one tweet.")
    source.add_argument(
        "--input", type=Path,
        help='JSONL file, one tweet per line: {"text": ..., "image": path, "aspects": [...], "id": ...}.',
    )  # fmt: skip

    parser.add_argument("--image", help="Image file of the tweet given with --text.")
    parser.add_argument(
        "--aspects", nargs="+",
        help="Aspects to classify instead of extracting them (with --text), e.g. --aspects 'Chuck Bass' food.",
    )  # fmt: skip
    parser.add_argument(
        "--output", type=Path,
        help="JSONL file for the predictions (required with --input). With --text the result goes to stdout.",
    )  # fmt: skip
    parser.add_argument(
        "--image-dir", type=Path,
        help="Folder that relative image paths of --input are read from (default: the folder of the input file).",
    )  # fmt: skip

    parser.add_argument("--explain", type=Path, metavar="DIR", help="Write one attention map PNG per tweet to DIR.")
    parser.add_argument(
        "--parser-model", default=DEFAULT_PARSER_MODEL,
        help=f"spaCy pipeline for the dependency parses (default: {DEFAULT_PARSER_MODEL}).",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8, help="Tweets per forward pass (default: 8).")
    parser.add_argument("--device", help="torch device, such as cpu or cuda:0 (default: the first GPU if any).")
    parser.add_argument("--fail-fast", action="store_true", help="Stop at the first line that fails.")

    args = parser.parse_args(argv)
    if args.input is not None and args.output is None:
        parser.error("--input needs --output.")
    if args.input is not None and (args.image is not None or args.aspects is not None):
        parser.error("--image and --aspects go with --text; with --input, put them in each line.")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}.")
    return args


def load_pipeline(model: str, parser_model: str, device: str | None = None) -> DascoMabsaPipeline:
    """Build the `multimodal-absa` pipeline from this package's classes and the checkpoint's weights.

    The installed package provides the pipeline, model and processor classes, so the checkpoint's own Python
    files are not run.
    """
    from transformers import pipeline

    return pipeline(
        PIPELINE_TASK, model=model, pipeline_class=DascoMabsaPipeline, parser_model=parser_model, device=device
    )


def read_line(line: str, line_number: int, image_dir: Path) -> dict:
    """Parse one JSONL line into a pipeline input and load its image; raise LineError naming the line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise LineError(f"line {line_number}: invalid JSON: {error}") from error
    if not isinstance(record, dict):
        raise LineError(f"line {line_number}: expected a JSON object, got {type(record).__name__}.")
    if not isinstance(record.get("text"), str):
        raise LineError(f"line {line_number}: 'text' is missing or not a string.")
    aspects = record.get("aspects")
    if aspects is not None and not (isinstance(aspects, list) and all(isinstance(a, str) for a in aspects)):
        raise LineError(f"line {line_number}: 'aspects' must be a list of strings, got {aspects!r}.")
    image = None
    if record.get("image") is not None:
        if not isinstance(record["image"], str):
            raise LineError(f"line {line_number}: 'image' must be a file path, got {record['image']!r}.")
        path = Path(record["image"])
        try:
            image = load_image(path if path.is_absolute() else image_dir / path)
        except OSError as error:
            raise LineError(f"line {line_number}: {error}") from error
    return {"text": record["text"], "image": image, "aspects": aspects, "id": record.get("id")}


def predict_file(pipe, args) -> int:
    """Predict every line of `args.input` into `args.output`; returns the exit status."""
    image_dir = args.image_dir if args.image_dir is not None else args.input.parent
    with open(args.input, encoding="utf-8") as handle:
        total = sum(1 for line in handle if line.strip())
    counts = {"read": 0, "predicted": 0}
    failed_lines: list[int] = []
    pending: list[tuple[int, dict]] = []

    def fail(line_number: int, message: str) -> None:
        failed_lines.append(line_number)
        logger.error(message)

    def flush() -> None:
        for line_number, item, results, error in predict_batch(pipe, pending, args.explain is not None):
            if args.fail_fast and failed_lines:
                break
            if error is not None:
                fail(line_number, f"line {line_number}: prediction failed: {error}")
            else:
                try:
                    if args.explain is not None:
                        name = safe_file_name(str(item["id"]) if item["id"] is not None else f"line{line_number}")
                        draw_attention_map(item["image"], results, args.explain / f"{name}.png")
                except (ValueError, OSError, ImportError) as error:
                    fail(line_number, f"line {line_number}: attention map failed: {error}")
                else:
                    output.write(json.dumps(output_record(line_number, item, results), ensure_ascii=False) + "\n")
                    counts["predicted"] += 1
            progress.update(1)
        pending.clear()

    if args.explain is not None:
        args.explain.mkdir(parents=True, exist_ok=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(args.input, encoding="utf-8") as lines,
        open(args.output, "w", encoding="utf-8") as output,
        logging_redirect_tqdm(),
        tqdm(total=total, unit="line", desc="predict") as progress,
    ):
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            counts["read"] += 1
            try:
                pending.append((line_number, read_line(line, line_number, image_dir)))
            except LineError as error:
                if args.fail_fast:
                    flush()  # the lines before the failing one are predicted first
                    if failed_lines:
                        break
                fail(line_number, str(error))
                progress.update(1)
            if len(pending) >= args.batch_size:
                flush()
            if args.fail_fast and failed_lines:
                break
        if pending and not (args.fail_fast and failed_lines):
            flush()

    summary = f"Read {counts['read']} lines: {counts['predicted']} predicted, {len(failed_lines)} failed"
    if failed_lines:
        summary += f" (lines {', '.join(map(str, sorted(failed_lines)))})"
    if args.fail_fast and failed_lines:
        summary += "; stopped at the first failure (--fail-fast)"
    logger.info(f"{summary}. Predictions: {args.output}")
    return 1 if failed_lines else 0


def predict_batch(pipe, pending: list[tuple[int, dict]], output_attentions: bool):
    """Yield `(line_number, item, results, error)` for each pending line.

    The batch runs in one call; when that call fails, each line runs alone so that the error names its line.
    """
    inputs = [pipeline_input(item) for _, item in pending]
    try:
        batch_results = pipe(inputs, output_attentions=output_attentions, batch_size=len(inputs))
    except Exception:  # noqa: BLE001  (any failure is retried line by line and then reported per line)
        batch_results = None
    for index, (line_number, item) in enumerate(pending):
        if batch_results is not None:
            yield line_number, item, batch_results[index], None
            continue
        try:
            yield line_number, item, pipe(inputs[index], output_attentions=output_attentions), None
        except Exception as error:  # noqa: BLE001  (reported with the line number, the batch goes on)
            yield line_number, item, None, f"{type(error).__name__}: {error}"


def pipeline_input(item: dict) -> dict:
    return {"text": item["text"], "image": item["image"], "aspects": item["aspects"]}


def output_record(line_number: int, item: dict, results: list[dict]) -> dict:
    """Build the JSONL record of one predicted line, without the attention weights (they go to --explain)."""
    record = {"line": line_number}
    if item["id"] is not None:
        record["id"] = item["id"]
    record["text"] = item["text"]
    record["aspects"] = [
        {key: value for key, value in result.items() if key != "image_attention"} for result in results
    ]
    return record


def predict_text(pipe, args, image) -> int:
    """Predict the tweet of `--text` with its loaded image; print the results as JSON, or write them to `--output`."""
    item = {"text": args.text, "image": image, "aspects": args.aspects, "id": None}
    results = pipe(pipeline_input(item), output_attentions=args.explain is not None)
    if args.explain is not None:
        path = draw_attention_map(image, results, args.explain / "tweet.png")
        logger.info(f"Attention map: {path}")
    record = output_record(1, item, results)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        print(json.dumps(record["aspects"], ensure_ascii=False, indent=2))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        # The image of --text is read before the model loads, so a wrong path fails at once.
        image = load_image(args.image) if args.text is not None and args.image is not None else None
        pipe = load_pipeline(args.model, args.parser_model, args.device)
    except OSError as error:
        # Missing or unreadable image, or a model folder or Hub id that cannot be loaded.
        logger.error(str(error))
        return 2
    if args.explain is not None:
        args.explain.mkdir(parents=True, exist_ok=True)
    if args.input is not None:
        return predict_file(pipe, args)
    if pipe.model.config.task == "masc" and not args.aspects:
        logger.error(f"{args.model} classifies given aspects (task 'masc'), so it extracts none: pass --aspects.")
        return 2
    return predict_text(pipe, args, image)


if __name__ == "__main__":
    sys.exit(main())
