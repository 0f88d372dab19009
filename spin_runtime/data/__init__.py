"""Reading data: SFT prompts and answers, pre-generated SPIN pairs, the converted pair files, built-in tasks."""
