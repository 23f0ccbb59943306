"""leanvision: token-efficient vision-language models for the Hugging Face Hub."""
