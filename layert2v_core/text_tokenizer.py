"""umt5 prompt tokenisation: Wan's text cleaning, then ids ending in EOS, cut at Wan's 512-token limit.

Two sources give the same ids for ordinary text: the Hugging Face tokenizer of a `google/umt5-xxl` folder (what
Wan itself loads) and the raw sentencepiece model that ComfyUI stores inside its umt5 files (what ComfyUI uses).
"""
from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TEXT_LEN = 512  # Wan2.1's text_len: the DiT's context rows, and the longest prompt the encoder sees
PAD_ID = 0
EOS_ID = 1
# Files that make a folder a tokenizer folder: the fast tokenizer Wan loads, or the bare sentencepiece model.
HF_TOKENIZER_FILE = "tokenizer.json"
SENTENCEPIECE_FILE = "spiece.model"


def clean_prompt(text: str) -> str:
    """Wan's 'whitespace' cleaning: fix mojibake (when ftfy is installed), unescape HTML twice, collapse spaces."""
    try:  # Wan runs ftfy.fix_text first; it is optional here because it is not a dependency of the project
        import ftfy
        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


@dataclass(frozen=True)
class Tokenized:
    """Ids of one prompt: its tokens then EOS, at most `TEXT_LEN` long; `dropped` tokens were cut off the end."""

    ids: tuple[int, ...]
    dropped: int = 0


class PromptTokenizer:
    """Text -> umt5 ids. Build it with `from_sentencepiece_bytes` or `from_folder`."""

    def __init__(self, encode_fn, source: str, max_length: int = TEXT_LEN):
        self._encode = encode_fn  # text -> ids without EOS
        self.source = source
        self.max_length = max_length

    @classmethod
    def from_sentencepiece_bytes(cls, model_bytes: bytes, source: str = "sentencepiece model") -> "PromptTokenizer":
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_proto=bytes(model_bytes))
        if processor.eos_id() != EOS_ID or processor.pad_id() != PAD_ID:
            raise ValueError(f"{source}: not a umt5 tokenizer (eos id {processor.eos_id()}, pad id "
                             f"{processor.pad_id()}; umt5 uses eos {EOS_ID}, pad {PAD_ID})")
        return cls(processor.encode, source)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "PromptTokenizer":
        """A Hugging Face tokenizer folder (tokenizer.json, as in google/umt5-xxl), or one holding spiece.model."""
        folder = Path(folder)
        if (folder / HF_TOKENIZER_FILE).is_file():
            from transformers import AutoTokenizer

            hf = AutoTokenizer.from_pretrained(str(folder))
            if hf.eos_token_id != EOS_ID or hf.pad_token_id != PAD_ID:
                raise ValueError(f"{folder}: not a umt5 tokenizer (eos id {hf.eos_token_id}, pad id "
                                 f"{hf.pad_token_id}; umt5 uses eos {EOS_ID}, pad {PAD_ID})")
            return cls(lambda text: hf(text, add_special_tokens=False)["input_ids"], str(folder))
        if (folder / SENTENCEPIECE_FILE).is_file():
            return cls.from_sentencepiece_bytes((folder / SENTENCEPIECE_FILE).read_bytes(), str(folder))
        raise FileNotFoundError(f"no {HF_TOKENIZER_FILE} or {SENTENCEPIECE_FILE} in tokenizer folder {folder}")

    def __call__(self, text: str) -> Tokenized:
        ids = list(self._encode(clean_prompt(text)))
        # Like the HF tokenizer with truncation: keep the first max_length - 1 tokens, then EOS.
        dropped = max(0, len(ids) - (self.max_length - 1))
        if dropped:
            ids = ids[: self.max_length - 1]
            log.warning("prompt is longer than %d umt5 tokens; its last %d token(s) were dropped: %.60r...",
                        self.max_length, dropped, text)
        return Tokenized(tuple(ids) + (EOS_ID,), dropped)


def is_tokenizer_folder(folder: Path) -> bool:
    return (folder / HF_TOKENIZER_FILE).is_file() or (folder / SENTENCEPIECE_FILE).is_file()
