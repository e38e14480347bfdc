"""The real CLIP byte-level BPE tokenizer, built offline from the shipped files."""

from transformers import CLIPTokenizer

from negalora.resources import CLIP_TOKENIZER

# SDXL's second tokenizer (OpenCLIP bigG) pads with "!" (id 0); the first pads with <|endoftext|>.
PAD_CLIP_L = "<|endoftext|>"
PAD_OPENCLIP = "!"


def clip_tokenizer(pad_token: str = PAD_CLIP_L) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER), model_max_length=77, pad_token=pad_token)
