"""Dataset readers for the text corpora: documents tokenized with all-MiniLM-L6-v2's WordPiece
tokenizer (`surge.processors.text`, the same code a serving pipeline tokenizes with) into
INT64 token ids padded with 0 to a fixed length.

The length is the recipe's `model.input_shape` ([128] by default). Training splits carry the
token ids only (the classifiers find padding from the id). Evaluation sets carry them under the
model's input name; the `<corpus>-tokens` sets carry the tokenizer's `input_ids` and
`attention_mask` instead, the inputs of a sentence encoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from surge.errors import ConfigError
from surge.tasks import DataOptions, Dataset, EvalDataset, Split
from surge.tasks.data import check_generated_size
from surge_examples.text.corpus import Documents, corpus_file, read_corpus

DEFAULT_LENGTH = 128
INPUT_IDS, ATTENTION_MASK = "input_ids", "attention_mask"


def encode(texts: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, attention mask), INT64 [N, length]: truncated, then padded with 0."""
    from surge.processors.text import load_tokenizer
    from surge.zoo.minilm import tokenizer_file

    ids = np.zeros((len(texts), length), np.int64)
    mask = np.zeros((len(texts), length), np.int64)
    tokenizer = load_tokenizer(str(tokenizer_file()), length)
    for row, encoding in enumerate(tokenizer.encode_batch(texts)):
        ids[row, :len(encoding.ids)] = encoding.ids
        mask[row, :len(encoding.ids)] = encoding.attention_mask
    return ids, mask


def sequence_length(options: DataOptions) -> int:
    if not options.input_shape:
        return DEFAULT_LENGTH
    if len(options.input_shape) != 1:
        raise ConfigError(f"text models take token ids [N, L]: model.input_shape must be [L], "
                          f"got {list(options.input_shape)}")
    return int(options.input_shape[0])


class TextCorpus(Dataset):
    """A corpus's train and test splits as token ids and class ids (classes sorted by name)."""

    def __init__(self, corpus: str, encoder_inputs: bool = False) -> None:
        self.name = f"{corpus}-tokens" if encoder_inputs else corpus
        self.corpus = corpus
        self.encoder_inputs = encoder_inputs

    def check(self, options: DataOptions) -> None:
        for split in ("train", "test"):
            corpus_file(self.corpus, split, options.root)

    def classes(self, root: Path | None) -> list[str]:
        return sorted(set(read_corpus(self.corpus, "train", root).categories))

    def documents(self, split: str, options: DataOptions) -> Documents:
        """The split, shuffled once by seed (the files are sorted by category) and cut to the
        options' size."""
        documents = read_corpus(self.corpus, split, options.root)
        size = options.train_size if split == "train" else options.test_size
        order = np.random.default_rng(options.seed).permutation(len(documents))[:size]
        return Documents([documents.texts[i] for i in order],
                         [documents.categories[i] for i in order])

    def labelled(self, split: str, options: DataOptions,
                 classes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, mask, class ids) of a split; a category unknown to training is an error."""
        documents = self.documents(split, options)
        index = {name: i for i, name in enumerate(classes)}
        unknown = sorted(set(documents.categories) - set(index))
        if unknown:
            raise ConfigError(f"{self.name} {split}: categories {unknown} are not in training")
        length = sequence_length(options)
        # ids and mask, INT64 [N, length] each: a length past memory is refused before either
        check_generated_size("model.input_shape length", length, 16 * len(documents),
                             f"token ids for {len(documents):,} documents")
        ids, mask = encode(documents.texts, length)
        return ids, mask, np.array([index[c] for c in documents.categories], np.int64)

    def training(self, options: DataOptions) -> tuple[Split, Split]:
        import torch

        classes = self.classes(options.root)
        splits = []
        for split in ("train", "test"):
            ids, _, labels = self.labelled(split, options, classes)
            splits.append(Split(torch.from_numpy(ids), torch.from_numpy(labels)))
        return splits[0], splits[1]

    def evaluation(self, input_name: str, options: DataOptions) -> EvalDataset:
        classes = self.classes(options.root)
        ids, mask, labels = self.labelled("test", options, classes)
        inputs = {INPUT_IDS: ids, ATTENTION_MASK: mask} if self.encoder_inputs else {input_name: ids}
        return EvalDataset(self.name, inputs, labels, classes)


class CorpusTexts(Dataset):
    """A corpus's test split as the UTF-8 texts themselves, BYTES [N, 1] (a text pipeline's
    input: `surge bench --data reuters-r8-text` and tuning a text pipeline send them)."""

    def __init__(self, corpus: str) -> None:
        self.name = f"{corpus}-text"
        self.corpus = corpus

    def check(self, options: DataOptions) -> None:
        corpus_file(self.corpus, "test", options.root)

    def evaluation(self, input_name: str, options: DataOptions) -> EvalDataset:
        reader = TextCorpus(self.corpus)
        classes = reader.classes(options.root)
        documents = reader.documents("test", options)
        rows = np.empty((len(documents), 1), dtype=object)
        rows[:, 0] = [text.encode() for text in documents.texts]
        index = {name: i for i, name in enumerate(classes)}
        labels = np.array([index.get(c, -1) for c in documents.categories], np.int64)
        return EvalDataset(self.name, {input_name: rows}, labels, classes)
