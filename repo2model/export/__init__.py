"""Export: the trained model as one GGUF file for llama.cpp, Ollama and LM Studio, and llama.cpp as a backend.

In the order an export uses them (repo2model/stages/export.py's `run()` reads like this list):

    packages    gguf and llama-cpp-python, imported on first use (the optional extra, requirements-export.txt)
    merge       the model folder -> one full torch model: scratch as saved; a LoRA adapter merged into its base; a
                QLoRA adapter merged into its 4-bit base dequantized first (never into the 4-bit weights)
    vocabulary  the tokenizer -> the GGUF vocabulary: a trained byte-level BPE as `gpt2` with the `gpt-2`
                pre-tokenizer; a SentencePiece-style base (extend mode) as `llama` with scores from its merges;
                token types (control, user-defined, byte, ...) and the special ids
    gguf_file   the LLaMA hyper-parameters and weights -> an f16 GGUF file (gguf's GGUFWriter and its tensor names)
    quantize    the f16 GGUF -> q8_0 / q4_k_m through llama.cpp's own quantizer
    modelfile   the Ollama Modelfile beside the GGUF: raw template, stop at <COMMIT_END>, the trained context
    backend     LlamaCppModel: a GGUF loaded in llama.cpp; logits, log-probabilities of continuations, sampling
    verify      the proof that an export is the same model: logits, test loss and likelihood recall@k against torch
"""
