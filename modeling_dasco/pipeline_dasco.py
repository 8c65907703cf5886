"""The `multimodal-absa` pipeline: raw tweet text and its image in, aspects with sentiments and character offsets out.

Shipped as remote code with every checkpoint (`DascoForMabsa.save_pretrained` writes it and the `custom_pipelines`
entry of config.json), so it imports only torch, transformers and the standard library at module level. Pillow
and spaCy are imported inside `try` blocks where they are needed.
"""

import os

import torch
from torch.utils.data import DataLoader
from transformers import Pipeline
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from .parsing import DEFAULT_PARSER_MODEL, DependencyParser
from .text_utils import Token, find_term, tokenize_tweet


PIPELINE_TASK = "multimodal-absa"


def custom_pipelines_entry() -> dict:
    """Return the `custom_pipelines` entry of config.json that lets `pipeline(PIPELINE_TASK, ...)` find this class."""
    module = DascoMabsaPipeline.__module__.rsplit(".", 1)[-1]
    return {PIPELINE_TASK: {"impl": f"{module}.DascoMabsaPipeline", "pt": ["AutoModel"], "type": "multimodal"}}


class DascoMabsaPipeline(Pipeline):
    r"""
    Multimodal aspect-based sentiment analysis of raw tweets: find the aspect terms of a tweet and the sentiment
    toward each, or classify given aspects.

    ```python
    >>> from transformers import pipeline

    >>> absa = pipeline("multimodal-absa", model="runs/sample", trust_remote_code=True)
    >>> results = absa({"text": "RT @user: Chuck Bass is everything #MCM", "image": "photo.jpg"})
    >>> results = absa("The pasta was great", image="dinner.jpg", aspects=["pasta", "service"])
    >>> [(result["aspect"], result["start"], result["end"]) for result in results]
    [('pasta', 4, 9), ('service', None, None)]
    ```

    The text is unescaped and split into words by `text_utils.tokenize_tweet`, parsed by spaCy, and read with the
    image by the model. Each result has:

    - `aspect`: the substring `text[start:end]` of the raw text, or the given aspect when it does not occur in it.
    - `start`, `end`: character offsets into the raw text (HTML entities included), or None for an aspect that
      does not occur in the text.
    - `sentiment`: `"negative"`, `"neutral"` or `"positive"`, and `score`, its probability. Both are None for a
      checkpoint trained only for aspect extraction (`config.task="mate"`), and for a given aspect that lies
      beyond the processor's `max_length`.
    - `image_attention` (with `output_attentions=True`): the aspect queries' Q-Former cross-attention over the
      image tokens (CLS first, then the patches row by row), averaged over heads, cross-attention layers and
      query tokens. It sums to 1 over all image tokens.

    Without aspects, the model extracts them (JMASA). With `aspects=[...]` (terms or categories such as "food"
    that need not occur in the text), it classifies those instead and returns one result per given aspect, in
    order. A term found in the text takes the span of its first occurrence (whole words, exact case first). Any
    other aspect has no span: its words become its Q-Former queries and the whole tweet is its scope.

    Args:
        parser_model (`str`, *optional*, defaults to `"en_core_web_sm"`):
            spaCy pipeline that parses each tweet for the syntactic branch and the aspect scopes. None skips
            parsing, which only a model without the syntactic branch accepts.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, *args, parser_model: str | None = DEFAULT_PARSER_MODEL, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError("The multimodal-absa pipeline needs the DASCO processor; pass processor=... .")
        if parser_model is None and self.model.config.use_syntactic_branch:
            raise ValueError(
                "This model's syntactic branch reads a dependency parse; pass parser_model (a spaCy pipeline "
                f"name such as {DEFAULT_PARSER_MODEL!r}) instead of None."
            )
        self.parser = DependencyParser(parser_model) if parser_model is not None else None

    def __call__(self, inputs, image=None, aspects: list[str] | None = None, **kwargs):
        """Analyze one tweet or a list of tweets.

        Args:
            inputs: the raw text (`str`), a dict `{"text": ..., "image": ..., "aspects": [...]}`, or a list of
                either. A dict's own "image" and "aspects" take precedence over the arguments below.
            image: the image of a text given as `str`: a file path or a PIL image. For a list of texts, a list
                with one image per text.
            aspects: terms or categories to classify instead of extracting the aspects, for every input.
            output_attentions (`bool`, *optional*): add `image_attention` to every result.
            batch_size (`int`, *optional*): number of tweets per forward pass of the model.

        Returns:
            For one tweet, a list of result dicts; for a list of tweets, a list of such lists.
        """
        if isinstance(inputs, (list, tuple)):
            images = _images_for_list(image, len(inputs))
            inputs = [_as_input(item, item_image, aspects) for item, item_image in zip(inputs, images)]
        elif isinstance(inputs, (str, dict)):
            inputs = _as_input(inputs, image, aspects)
        elif image is not None or aspects is not None:
            raise ValueError("With a dataset or generator of inputs, put 'image' and 'aspects' in each input dict.")
        return super().__call__(inputs, **kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        """Save the model (with this pipeline's code and `custom_pipelines` entry) and the whole processor.

        `Pipeline.save_pretrained` (transformers 5.25) saves the tokenizer and the image processor but not a
        processor, so the Q-Former tokenizer and the processor settings would be lost.
        """
        self.model.save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory, **kwargs)

    def _sanitize_parameters(self, output_attentions: bool | None = None, **unknown):
        if unknown:
            raise TypeError(
                f"The multimodal-absa pipeline got unknown arguments {sorted(unknown)}; it takes image, aspects, "
                "output_attentions and batch_size when called, and parser_model when created."
            )
        forward_parameters = {}
        if output_attentions is not None:
            forward_parameters["output_attentions"] = output_attentions
        return {}, forward_parameters, {}

    def preprocess(self, inputs: dict) -> dict:
        """Tokenize the raw text, load the image, parse the words and find the given aspects in the text."""
        tweet = _as_input(inputs, None, None)
        text, aspects = tweet["text"], tweet["aspects"]
        if not isinstance(text, str):
            raise TypeError(f"'text' must be a string, got {type(text).__name__}.")
        tokens = tokenize_tweet(text)
        if not tokens:
            raise ValueError(f"The text contains no words: {text!r}.")
        if aspects is not None:
            if isinstance(aspects, str) or not all(isinstance(aspect, str) and aspect.strip() for aspect in aspects):
                raise ValueError(f"'aspects' must be a list of non-empty strings, got {aspects!r}.")
            aspects = list(aspects)
        elif self.model.config.task == "masc":
            raise ValueError(
                "This checkpoint was trained to classify given aspects (task 'masc'), not to find them; pass "
                "aspects=[...]."
            )
        if self.model.config.use_image and tweet["image"] is None:
            raise ValueError("This model reads the image of each tweet; pass image=... (a file path or a PIL image).")

        words = [token.text for token in tokens]
        return {
            "tweet": {
                "text": text,
                "tokens": tokens,
                "image": load_image(tweet["image"]) if self.model.config.use_image else None,
                "heads": self.parser.heads(words) if self.parser is not None else None,
                "aspects": aspects,
                "spans": None if aspects is None else [find_term(tokens, aspect) for aspect in aspects],
            }
        }

    def _forward(self, model_inputs: dict, output_attentions: bool = False) -> dict:
        """Run the model on a batch of preprocessed tweets; the ones with given aspects and the others separately."""
        tweets = model_inputs["tweet"]
        tweets = [tweets] if isinstance(tweets, dict) else list(tweets)
        predictions = [{"spans": [], "labels": [], "scores": [], "attentions": []} for _ in tweets]
        to_extract = [index for index, tweet in enumerate(tweets) if tweet["aspects"] is None]
        to_classify = [index for index, tweet in enumerate(tweets) if tweet["aspects"]]
        for indices, task in ((to_extract, "jmasa"), (to_classify, "masc")):
            if indices:
                group = self.predict_group([tweets[index] for index in indices], task, output_attentions)
                for index, prediction in zip(indices, group):
                    predictions[index] = prediction
        return {"tweet": tweets, "prediction": predictions}

    def predict_group(self, tweets: list[dict], task: str, output_attentions: bool) -> list[dict]:
        """Word spans, label ids, scores and image attentions of each tweet's aspects, for one task."""
        features = {}
        if task == "masc":
            features["aspect_spans"] = [[span or (0, 0) for span in tweet["spans"]] for tweet in tweets]
            features["aspect_terms"] = [
                [None if span else aspect for span, aspect in zip(tweet["spans"], tweet["aspects"])]
                for tweet in tweets
            ]
        if self.parser is not None:
            features["dependency_heads"] = [tweet["heads"] for tweet in tweets]
        if self.model.config.use_image:
            features["images"] = [tweet["image"] for tweet in tweets]
        batch = self.processor([[token.text for token in tweet["tokens"]] for tweet in tweets], **features)
        batch.pop("mate_labels", None)
        batch.pop("aspect_truncated", None)
        batch = {name: value.to(self.device) for name, value in batch.items()}
        outputs = self.model(**batch, task=task, output_attentions=output_attentions)

        classifies = self.model.config.task != "mate"
        probabilities = outputs.masc_logits.float().softmax(-1).cpu()
        aspect_mask = outputs.aspect_mask.cpu()
        spans = outputs.aspect_spans.cpu()
        attentions = outputs.aspect_cross_attentions
        predictions = []
        for row, tweet in enumerate(tweets):
            if task == "masc":
                columns = list(range(len(tweet["aspects"])))
            else:
                columns = aspect_mask[row].nonzero().flatten().tolist()
            prediction = {"spans": [], "labels": [], "scores": [], "attentions": []}
            for column in columns:
                classified = bool(aspect_mask[row, column]) and classifies
                label = int(probabilities[row, column].argmax()) if classified else None
                prediction["spans"].append(tuple(spans[row, column].tolist()))
                prediction["labels"].append(label)
                prediction["scores"].append(float(probabilities[row, column, label]) if classified else None)
                if output_attentions and attentions is not None:
                    prediction["attentions"].append(average_query_attention(attentions[row, column]).cpu().tolist())
            predictions.append(prediction)
        return predictions

    def postprocess(self, model_outputs: dict) -> list[dict]:
        """Turn word spans into character offsets of the raw text and label ids into sentiment names."""
        tweet, prediction = model_outputs["tweet"], model_outputs["prediction"]
        if isinstance(tweet, list):
            # Without batching the outputs of `_forward` are lists of one tweet.
            (tweet,) = tweet
            (prediction,) = prediction
        id2label = {int(index): label for index, label in self.model.config.id2label.items()}
        tokens: list[Token] = tweet["tokens"]
        results = []
        for index, (start, end) in enumerate(prediction["spans"]):
            if start < end:
                char_start, char_end = tokens[start].start, tokens[end - 1].end
                aspect = tweet["text"][char_start:char_end]
            else:
                char_start, char_end = None, None
                aspect = tweet["aspects"][index]
            label = prediction["labels"][index]
            result = {
                "aspect": aspect,
                "start": char_start,
                "end": char_end,
                "sentiment": None if label is None else id2label[label],
                "score": prediction["scores"][index],
            }
            if prediction["attentions"]:
                result["image_attention"] = prediction["attentions"][index]
            results.append(result)
        return results

    def get_iterator(
        self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params
    ):
        """Batch tweets with `_collate_tweets`, because the processor can pad a batch only once it has every tweet."""
        if batch_size == 1:
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        if hasattr(inputs, "__len__"):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=_collate_tweets)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)


def average_query_attention(cross_attentions: torch.Tensor) -> torch.Tensor:
    """Average one aspect's `[layers, heads, queries, image_tokens]` cross-attentions into `[image_tokens]`.

    Rows of padding query positions are zero (see `DascoOutput.aspect_cross_attentions`) and are left out of the
    mean, so the result sums to 1 like each real row.
    """
    per_query = cross_attentions.float().mean(dim=(0, 1))
    real = per_query.sum(-1) > 0
    if not real.any():
        return torch.zeros_like(per_query[0])
    return per_query[real].mean(0)


def load_image(image):
    """Open an image given as a file path; a PIL image is returned as it is, None stays None."""
    if image is None or hasattr(image, "mode"):
        return image
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"'image' must be a file path or a PIL image, got {type(image).__name__}.")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:
        raise ImportError("Reading images needs Pillow: pip install Pillow.") from error
    try:
        with Image.open(image) as opened:
            opened.load()
            return opened.copy()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"Image file not found: {image}") from error
    except (UnidentifiedImageError, OSError) as error:
        raise OSError(f"Failed to read the image {image}: {error}") from error


def _as_input(item, image, aspects) -> dict:
    """Normalize one input into a dict with the keys text, image and aspects."""
    if isinstance(item, str):
        return {"text": item, "image": image, "aspects": aspects}
    if isinstance(item, dict):
        if "text" not in item:
            raise ValueError(f"An input dict needs a 'text' key; got the keys {sorted(item)}.")
        return {
            "text": item["text"],
            "image": item.get("image") if item.get("image") is not None else image,
            "aspects": item.get("aspects") if item.get("aspects") is not None else aspects,
        }
    raise TypeError(f"An input must be a string or a dict with 'text' and 'image', got {type(item).__name__}.")


def _images_for_list(image, count: int) -> list:
    if image is None:
        return [None] * count
    if isinstance(image, (list, tuple)) and len(image) == count:
        return list(image)
    raise ValueError(f"With a list of {count} inputs, pass image as a list of {count} images, or put each image in "
                     "its input dict.")  # fmt: skip


def _collate_tweets(items: list[dict]) -> dict:
    return {"tweet": [item["tweet"] for item in items]}


__all__ = ["PIPELINE_TASK", "DascoMabsaPipeline", "average_query_attention", "custom_pipelines_entry", "load_image"]
