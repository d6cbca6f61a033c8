"""The CLIP ViT-L/14@336 text tower: its files, the encoder, the embedding cache and vocabularies.

`encoder` turns text into unit vectors in the embedding space the network was distilled into;
`clip_model_files` checks a Hugging Face model folder before anything loads it;
`embedding_cache` keeps encoded prompts on disk; `vocabulary` reads class-name lists.
"""
