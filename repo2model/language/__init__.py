"""The commit language (how a commit is written as text), its tokenizer, the encoded history (tokens.pt) and
the training examples.

    tokens.py              the special tokens, and the escaping that keeps free text from spelling them
    commit_language.py     `CommitLanguage`: token families, rendering, prompts (`assemble_prompt`)
    parse.py               `parse_commit`: the structure of rendered or generated text
    encoding.py            text <-> ids through a tokenizer, exactly (`encode_texts`, `decode_ids`, `encode_prefix`)
    history_reader.py      commits.json + chunks.jsonl as checked records; family counts; the spool
    tokenizer_training.py  byte-level BPE trained on a bounded sample of renderings, or a base tokenizer extended
    tokenizer_folder.py    the tokenizer folder, saved and loaded with its commit language
    history_encoding.py    a whole history encoded in batches (segments up to the budget; ids reused when
                           unchanged), round trip, sizes
    dataset_config.py      `DatasetConfig`: the dataset_builder section, and the segment budget it sets
    encoded_commits.py     tokens.pt: every commit's ids, piece by piece
    splits.py              the chronological order and the train/val/test splits (and their update)
    examples.py            assembling an example from tokens.pt's ids; training_data_*.pt (`ExampleSet`)
"""
