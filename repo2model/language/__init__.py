"""The commit language (how a commit is written as text), the tokenizer folder, the encoded history (tokens.pt) and the training examples."""
