"""Stand-in of comfy.sd1_clip: only its location matters (ComfyUI ships sd1_tokenizer/ beside it)."""
